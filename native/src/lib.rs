//! factbus_native: the receive path's common case in one native call per
//! envelope body (docs/decisions.md, "Receive path: a native helper").
//!
//! For a body the plain path of ``factbus.envelope`` would accept, this
//! parses it, checks its structure and the value rules, writes each fact's
//! canonical form, recomputes its SHA-512/base64 hash, compares it with the
//! claimed one and builds the :class:`factbus.fact.Fact` objects. For anything
//! else it answers ``None`` ("doubt") and never raises on bad input: the
//! Python full path then decides exactly as without this module, and names
//! the problem. So this can only accept what the full path accepts, with the
//! same hash.

mod canon;
mod wire;

use canon::{Flags, Writer};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple, PyType};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use wire::{Obj, Pred, Val};

/// FxHash (rustc's): short keys, no DoS concern (bounded caches of names).
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

type Cache = HashMap<Box<str>, Py<PyString>, BuildHasherDefault<Fx>>;

/// Names kept as one string object each (keys, roles, types), as orjson's key
/// cache and ``factbus.fact._intern`` do; bounded.
const CACHE_LIMIT: usize = 4096;
const CACHE_KEY_BYTES: usize = 64;

/// The Fact slots, in this order.
const SLOTS: [&str; 6] = [
    "_ancestors",
    "_fields",
    "_predecessors",
    "_ref",
    "_wire_bytes",
    "_writer",
];

struct State {
    fact_type: Py<PyType>,
    ref_type: Py<PyType>,
    /// Byte offsets of the Fact slots (in ``SLOTS`` order) in an instance.
    offsets: [isize; 6],
    types: Py<PyDict>,
    no_predecessors: Py<PyDict>,
    empty: Py<PyTuple>,
    keys: Keys,
    names: Cache,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Hand over the classes received facts are built of: ``Fact`` (its slots
/// are set directly), ``FactRef`` (a tuple subclass), the dict of interned
/// type names (``factbus.fact._TYPES``) and the shared empty predecessors dict.
#[pyfunction]
fn setup(
    py: Python<'_>,
    fact_cls: &Bound<'_, PyType>,
    ref_cls: &Bound<'_, PyType>,
    types: &Bound<'_, PyDict>,
    no_predecessors: &Bound<'_, PyDict>,
) -> PyResult<()> {
    if !ref_cls.is_subclass_of::<PyTuple>()? {
        return Err(PyTypeError::new_err("ref_cls must be a tuple subclass"));
    }
    // Every slot is set here: a slot Fact gained since would stay empty.
    let mut declared: Vec<String> = fact_cls.getattr("__slots__")?.extract()?;
    declared.sort();
    if declared != SLOTS {
        return Err(PyTypeError::new_err(format!(
            "fact_cls.__slots__ is {declared:?}, this build sets {SLOTS:?}"
        )));
    }
    let member = py.import("types")?.getattr("MemberDescriptorType")?;
    let mut offsets = [0isize; 6];
    for (name, offset) in SLOTS.iter().zip(offsets.iter_mut()) {
        let descr = fact_cls.getattr("__dict__")?.get_item(name)?;
        if !descr.is_exact_instance(&member) {
            return Err(PyTypeError::new_err(format!(
                "fact_cls.{name} must be a slot"
            )));
        }
        // A __slots__ entry is an object member (T_OBJECT_EX) at a fixed
        // offset in the instance: where object.__setattr__ stores it.
        let def = unsafe { &*(*(descr.as_ptr() as *mut ffi::PyMemberDescrObject)).d_member };
        if def.type_code != ffi::Py_T_OBJECT_EX || def.offset <= 0 {
            return Err(PyTypeError::new_err(format!(
                "fact_cls.{name} is not an object slot"
            )));
        }
        *offset = def.offset;
    }
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(State {
        fact_type: fact_cls.clone().unbind(),
        ref_type: ref_cls.clone().unbind(),
        offsets,
        types: types.clone().unbind(),
        no_predecessors: no_predecessors.clone().unbind(),
        empty: PyTuple::empty(py).unbind(),
        keys: Keys::new(),
        names: Cache::default(),
    });
    Ok(())
}

/// One string object per key or role (as orjson's key cache): a direct-mapped
/// table of [`KEY_SLOTS`] names up to [`CACHE_KEY_BYTES`] bytes; a name whose
/// slot holds another replaces it.
struct Keys(Vec<Option<(Box<str>, Py<PyString>)>>);

const KEY_SLOTS: usize = 1024;

impl Keys {
    fn new() -> Keys {
        Keys((0..KEY_SLOTS).map(|_| None).collect())
    }

    fn get<'py>(&mut self, py: Python<'py>, text: &str) -> Bound<'py, PyString> {
        let bytes = text.as_bytes();
        if bytes.len() > CACHE_KEY_BYTES || bytes.is_empty() {
            return PyString::new(py, text);
        }
        let mut h = Fx(bytes.len() as u64);
        h.write(bytes);
        let slot = &mut self.0[(h.finish() >> 32) as usize % KEY_SLOTS];
        if let Some((name, s)) = slot {
            if **name == *text {
                return s.bind(py).clone();
            }
        }
        let s = PyString::intern(py, text);
        *slot = Some((text.into(), s.clone().unbind()));
        s
    }
}

/// A str object of ``text``: copied as it is when ASCII (no UTF-8 decoding).
fn new_str<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    if !text.is_ascii() {
        return Ok(PyString::new(py, text).into_any());
    }
    unsafe {
        let obj = ffi::PyUnicode_New(text.len() as ffi::Py_ssize_t, 127);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        std::ptr::copy_nonoverlapping(
            text.as_ptr(),
            ffi::PyUnicode_DATA(obj) as *mut u8,
            text.len(),
        );
        Ok(Bound::from_owned_ptr(py, obj))
    }
}

impl State {
    /// A type name: one object per name, shared with ``factbus.fact._TYPES``.
    fn type_name<'py>(&mut self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyString>> {
        if let Some(s) = self.names.get(text) {
            return Ok(s.bind(py).clone());
        }
        let fresh = PyString::new(py, text);
        let types = self.types.bind(py);
        let kept = match types.get_item(&fresh)? {
            Some(kept) => kept.cast_into::<PyString>()?,
            None if types.len() < CACHE_LIMIT => {
                types.set_item(&fresh, &fresh)?;
                fresh
            }
            None => return Ok(fresh),
        };
        if self.names.len() < CACHE_LIMIT {
            self.names.insert(text.into(), kept.clone().unbind());
        }
        Ok(kept)
    }

    fn value<'py>(&mut self, py: Python<'py>, value: &Val) -> PyResult<Bound<'py, PyAny>> {
        Ok(match value {
            Val::Null => py.None().into_bound(py),
            Val::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
            Val::Int(i) => i.into_pyobject(py)?.into_any(),
            Val::Float(f) => PyFloat::new(py, *f).into_any(),
            Val::Str(s) => new_str(py, s)?.into_any(),
            Val::List(items) => {
                let list = PyList::empty(py);
                for item in items {
                    list.append(self.value(py, item)?)?;
                }
                list.into_any()
            }
            Val::Obj(obj) => self.object(py, obj)?.into_any(),
        })
    }

    fn object<'py>(&mut self, py: Python<'py>, obj: &Obj) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (key, value) in obj {
            let key = self.keys.get(py, key);
            dict.set_item(key, self.value(py, value)?)?;
        }
        Ok(dict)
    }

    fn new_ref<'py>(
        &mut self,
        py: Python<'py>,
        ty: &str,
        hash: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ty = self.type_name(py, ty)?;
        let hash = new_str(py, hash)?;
        // What tuple.__new__(FactRef, (ty, hash)) does, without the call.
        unsafe {
            let obj = alloc_instance(py, &self.ref_type, 2)?;
            ffi::PyTuple_SET_ITEM(obj, 0, ty.into_ptr());
            ffi::PyTuple_SET_ITEM(obj, 1, hash.into_ptr());
            // Two strings: never part of a cycle (CPython untracks such exact
            // tuples itself, never a subclass's: see docs/decisions.md).
            ffi::PyObject_GC_UnTrack(obj.cast());
            Ok(Bound::from_owned_ptr(py, obj))
        }
    }

    fn fact<'py>(
        &mut self,
        py: Python<'py>,
        wire: &wire::WireFact,
        flags: &Flags,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fields = self.object(py, &wire.fields)?.into_any();
        let preds = if wire.preds.is_empty() {
            self.no_predecessors.bind(py).clone()
        } else {
            let dict = PyDict::new(py);
            for (role, pred) in &wire.preds {
                let role = self.keys.get(py, role);
                let value = match pred {
                    Pred::One(r) => self.new_ref(py, &r.ty, &r.hash)?,
                    Pred::Many(refs) => {
                        let items = refs
                            .iter()
                            .map(|r| self.new_ref(py, &r.ty, &r.hash))
                            .collect::<PyResult<Vec<_>>>()?;
                        let tuple = PyTuple::new(py, items)?;
                        unsafe { ffi::PyObject_GC_UnTrack(tuple.as_ptr().cast()) };
                        tuple.into_any()
                    }
                };
                dict.set_item(role, value)?;
            }
            // Roles to references: no cycle (nobody writes to it after this).
            unsafe { ffi::PyObject_GC_UnTrack(dict.as_ptr().cast()) };
            dict
        };
        let own = self.new_ref(py, &wire.ty, &wire.hash)?;
        let writer =
            (flags.astral_key as u8) | (flags.float_layout as u8) << 1 | (flags.nested as u8) << 2;
        let values: [Bound<'py, PyAny>; 6] = [
            self.empty.bind(py).clone().into_any(),
            fields,
            preds.into_any(),
            own,
            py.None().into_bound(py),
            writer.into_pyobject(py)?.into_any(),
        ];
        // What object.__new__(Fact) and the slot assignments of
        // factbus.fact.received_fact do: the new instance is zeroed, each
        // slot takes a reference.
        unsafe {
            let obj = Bound::from_owned_ptr(py, alloc_instance(py, &self.fact_type, 0)?);
            for (offset, value) in self.offsets.iter().zip(values) {
                let slot = (obj.as_ptr() as *mut u8).offset(*offset) as *mut *mut ffi::PyObject;
                *slot = value.into_ptr();
            }
            // A received fact cannot be part of a reference cycle: what its
            // slots hold (now and once Fact fills its caches) never refers
            // back to it. The collector need not walk it (docs/decisions.md).
            ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
            Ok(obj)
        }
    }
}

/// A new instance of `ty` with `items` items (a tuple's length; 0 for other
/// types), zeroed, from the type's own `tp_alloc` as `type.__new__` makes it;
/// the caller owns the reference and fills the instance before anyone sees it.
///
/// # Safety
/// Needs the GIL (`py`); `items` must suit the type's layout.
unsafe fn alloc_instance(
    py: Python<'_>,
    ty: &Py<PyType>,
    items: ffi::Py_ssize_t,
) -> PyResult<*mut ffi::PyObject> {
    let tp = ty.as_ptr() as *mut ffi::PyTypeObject;
    let obj = unsafe {
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        alloc(tp, items)
    };
    if obj.is_null() {
        return Err(PyErr::fetch(py));
    }
    Ok(obj)
}

/// The state, unless another thread holds it: building objects may run a
/// finalizer that lets another thread decode meanwhile; that thread then
/// leaves its bodies to the full path rather than wait (it holds the GIL).
fn lock() -> Option<std::sync::MutexGuard<'static, Option<State>>> {
    match STATE.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Verify one body; ``None`` on any doubt.
fn decode_one<'py>(
    py: Python<'py>,
    state: &mut State,
    writer: &mut Writer,
    body: &[u8],
    max_bytes: usize,
) -> PyResult<Option<Bound<'py, PyList>>> {
    if body.len() > max_bytes {
        return Ok(None);
    }
    let Some(envelope) = wire::parse(body) else {
        return Ok(None);
    };
    let facts = &envelope.0;
    let mut flags = Vec::with_capacity(facts.len());
    for fact in facts {
        if fact.ty.is_empty()
            || writer.fact(&fact.fields, &fact.preds).is_err()
            || !writer.hash_is(&fact.hash)
        {
            return Ok(None);
        }
        flags.push(std::mem::take(&mut writer.flags));
    }
    if !in_order(facts) {
        return Ok(None);
    }
    let built = facts
        .iter()
        .zip(&flags)
        .map(|(fact, flags)| state.fact(py, fact, flags))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(Some(PyList::new(py, built)?))
}

/// No fact names itself, or a fact at or after its own place (misordered, a
/// cycle, or a duplicate of a later fact: the full path decides those).
fn in_order(facts: &[wire::WireFact]) -> bool {
    if facts.len() == 1 {
        let own = &facts[0];
        return refs(own).all(|r| r.hash != own.hash || r.ty != own.ty);
    }
    let mut last: HashMap<(&str, &str), usize, BuildHasherDefault<Fx>> = HashMap::default();
    for (i, fact) in facts.iter().enumerate() {
        last.insert((&fact.ty, &fact.hash), i);
    }
    facts
        .iter()
        .enumerate()
        .all(|(i, fact)| refs(fact).all(|r| last.get(&(&*r.ty, &*r.hash)).is_none_or(|&j| j < i)))
}

fn refs<'a>(fact: &'a wire::WireFact) -> impl Iterator<Item = &'a wire::Ref<'a>> {
    fact.preds.iter().flat_map(|(_, pred)| match pred {
        Pred::One(r) => std::slice::from_ref(r).iter(),
        Pred::Many(refs) => refs.iter(),
    })
}

fn limits(max_bytes: i64, max_depth: i64) -> Option<(usize, usize)> {
    // max_depth below 1: even the fields object is too deep (the full path says so).
    if max_bytes < 0 || max_depth < 1 {
        return None;
    }
    Some((max_bytes as usize, max_depth.min(1 << 20) as usize))
}

/// The facts of each body (an iterable of ``bytes``), or ``None`` for a body
/// left to the full path.
#[pyfunction]
fn decode_bodies<'py>(
    py: Python<'py>,
    bodies: &Bound<'py, PyAny>,
    max_bytes: i64,
    max_depth: i64,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let out = PyList::empty(py);
    let doubts = PyList::empty(py);
    let mut guard = lock();
    let mut state: Option<&mut State> = match guard.as_mut() {
        Some(guard) => Some(
            guard
                .as_mut()
                .ok_or_else(|| PyRuntimeError::new_err("factbus_native.setup() was not called"))?,
        ),
        None => None, // another thread holds it: the Python paths decide
    };
    let limits = limits(max_bytes, max_depth);
    let mut writer = Writer::new(limits.map_or(1, |l| l.1));
    for (i, body) in bodies.try_iter()?.enumerate() {
        let body = body?;
        let facts = match (state.as_deref_mut(), limits, body.cast::<PyBytes>()) {
            (Some(state), Some((max_bytes, _)), Ok(bytes)) => {
                decode_one(py, state, &mut writer, bytes.as_bytes(), max_bytes)?
            }
            // Busy, limits below 1, or a bytearray or memoryview: the Python paths.
            _ => None,
        };
        match facts {
            Some(list) => {
                // Facts only (themselves untracked, referring to nothing that
                // could lead back), read by decode_each's callers and never
                // added to: no cycle can pass through it (docs/decisions.md,
                // "Kafka records out of the cyclic collector's lists").
                unsafe { ffi::PyObject_GC_UnTrack(list.as_ptr().cast()) };
                out.append(list)?
            }
            None => {
                out.append(py.None())?;
                doubts.append(i)?;
            }
        }
    }
    Ok((out, doubts))
}

/// :func:`decode_bodies` of one body.
#[pyfunction]
fn decode<'py>(
    py: Python<'py>,
    body: &Bound<'py, PyAny>,
    max_bytes: i64,
    max_depth: i64,
) -> PyResult<Option<Bound<'py, PyList>>> {
    let Some(mut guard) = lock() else {
        return Ok(None);
    };
    let state = guard
        .as_mut()
        .ok_or_else(|| PyRuntimeError::new_err("factbus_native.setup() was not called"))?;
    let (Some((max_bytes, max_depth)), Ok(bytes)) =
        (limits(max_bytes, max_depth), body.cast::<PyBytes>())
    else {
        return Ok(None);
    };
    let mut writer = Writer::new(max_depth);
    decode_one(py, state, &mut writer, bytes.as_bytes(), max_bytes)
}

/// The canonical bytes and hash this module computes for one body's facts,
/// ``[(canonical, hash), ...]``, or ``None`` where it doubts (for tests).
#[pyfunction]
fn canonical_forms<'py>(
    py: Python<'py>,
    body: &[u8],
    max_depth: i64,
) -> PyResult<Option<Vec<(Bound<'py, PyBytes>, String)>>> {
    let Some((_, max_depth)) = limits(0, max_depth) else {
        return Ok(None);
    };
    let Some(envelope) = wire::parse(body) else {
        return Ok(None);
    };
    let mut writer = Writer::new(max_depth);
    let mut out = Vec::new();
    for fact in &envelope.0 {
        if writer.fact(&fact.fields, &fact.preds).is_err() {
            return Ok(None);
        }
        out.push((PyBytes::new(py, &writer.out), writer.hash()));
    }
    Ok(Some(out))
}

/// For benchmarks/studies: run the stages of :func:`decode_bodies` up to
/// ``stage`` (1 parse, 2 + canonical form, 3 + hash, 4 + Python objects) over
/// ``bodies``; returns how many bodies passed.
#[pyfunction]
fn _stages(py: Python<'_>, bodies: Vec<Vec<u8>>, stage: u8) -> PyResult<usize> {
    let mut guard = lock().ok_or_else(|| PyRuntimeError::new_err("busy"))?;
    let state = guard
        .as_mut()
        .ok_or_else(|| PyRuntimeError::new_err("setup() was not called"))?;
    let mut writer = Writer::new(32);
    let mut passed = 0;
    for body in &bodies {
        let Some(envelope) = wire::parse(body) else {
            continue;
        };
        let mut ok = true;
        for fact in &envelope.0 {
            if stage >= 2 {
                ok &= writer.fact(&fact.fields, &fact.preds).is_ok();
            }
            if stage >= 3 {
                ok &= writer.hash_is(&fact.hash);
            }
            if stage >= 4 {
                let flags = std::mem::take(&mut writer.flags);
                state.fact(py, fact, &flags)?;
            }
        }
        passed += ok as usize;
    }
    Ok(passed)
}

/// The one type whose instances :func:`untrack_records` takes out of the
/// collector's lists: librdkafka's consumed record (a static type of
/// confluent-kafka's C extension; docs/decisions.md, "Kafka records out of the
/// cyclic collector's lists").
const RECORD_TYPE: &[u8] = b"confluent_kafka.cimpl.Message";

/// Take every item of ``records`` whose exact type is ``record_type`` out of
/// the cyclic garbage collector's lists (``PyObject_GC_UnTrack``: O(1) each,
/// nothing if already untracked); other items are left as they are. Returns
/// how many were of that type. ``record_type`` must be confluent-kafka's
/// ``Message`` (a static type of that name that the collector tracks), else
/// ``TypeError``: its instances hold only strings, bytes, a ``KafkaError`` and
/// a headers list, so cannot be part of a reference cycle unless someone calls
/// their ``set_*`` methods with one, which the caller promises not to do.
#[pyfunction]
fn untrack_records(records: &Bound<'_, PyList>, record_type: &Bound<'_, PyType>) -> PyResult<usize> {
    let tp = record_type.as_ptr() as *mut ffi::PyTypeObject;
    // SAFETY: a type object; its name is a NUL-terminated string it owns.
    let (name, flags) = unsafe { (std::ffi::CStr::from_ptr((*tp).tp_name), (*tp).tp_flags) };
    if name.to_bytes() != RECORD_TYPE
        || flags & ffi::Py_TPFLAGS_HEAPTYPE != 0
        || flags & ffi::Py_TPFLAGS_HAVE_GC == 0
    {
        let kind = if flags & ffi::Py_TPFLAGS_HEAPTYPE != 0 {
            " (a class defined in Python)"
        } else if flags & ffi::Py_TPFLAGS_HAVE_GC == 0 {
            " (not tracked by the collector)"
        } else {
            ""
        };
        return Err(PyTypeError::new_err(format!(
            "untrack_records takes confluent_kafka.cimpl.Message records only, not {}{kind}",
            name.to_string_lossy()
        )));
    }
    let list = records.as_ptr();
    let mut untracked = 0;
    // No Python code runs in this loop (the GIL is held), so the list cannot change.
    for i in 0..records.len() {
        unsafe {
            let item = ffi::PyList_GET_ITEM(list, i as ffi::Py_ssize_t);
            if ffi::Py_TYPE(item) == tp {
                ffi::PyObject_GC_UnTrack(item.cast());
                untracked += 1;
            }
        }
    }
    Ok(untracked)
}

#[pymodule]
fn factbus_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(setup, m)?)?;
    m.add_function(wrap_pyfunction!(decode_bodies, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_forms, m)?)?;
    m.add_function(wrap_pyfunction!(_stages, m)?)?;
    m.add_function(wrap_pyfunction!(untrack_records, m)?)?;
    Ok(())
}
