//! The canonical form jinaga.js 6.11 hashes (DESIGN.md §1), written from the
//! parsed values: keys sorted by UTF-16 code units and written as
//! ``JSON.stringify(key)``, numbers as JavaScript writes them, no whitespace.

use crate::wire::{Obj, Pred, Ref, Val};
use base64::Engine;
use sha2::{Digest, Sha512};
use std::cmp::Ordering;

/// What a fact's canonical form needed, as :class:`factbus.fact.Fact` records
/// it in ``_writer``.
#[derive(Default)]
pub struct Flags {
    /// A key holds a character beyond the BMP (UTF-16 order differs).
    pub astral_key: bool,
    /// A float that orjson writes otherwise than JavaScript (integral, tiny).
    pub float_layout: bool,
    /// A list or object nested in the fields.
    pub nested: bool,
}

/// Writes canonical forms into one reused buffer.
pub struct Writer {
    pub out: Vec<u8>,
    pub flags: Flags,
    max_depth: usize,
}

/// Any refusal: the caller leaves the body to the full path.
pub struct Doubt;

fn astral(s: &str) -> bool {
    s.as_bytes().iter().any(|&b| b >= 0xF0)
}

/// JavaScript's string order (UTF-16 code units).
pub fn utf16_cmp(a: &str, b: &str) -> Ordering {
    if astral(a) || astral(b) {
        a.encode_utf16().cmp(b.encode_utf16())
    } else {
        // Without surrogate pairs UTF-8 byte order is code point order, which
        // is UTF-16 order.
        a.as_bytes().cmp(b.as_bytes())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Bytes ``JSON.stringify`` escapes: ``"``, ``\\`` and control characters.
static ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of ``w`` is below ``n`` (n <= 128; exact for "any").
fn has_less(w: u64, n: u8) -> bool {
    w.wrapping_sub(LO * n as u64) & !w & HI != 0
}

/// The index of the first byte of ``bytes`` that ``JSON.stringify`` escapes,
/// eight bytes at a time where none does.
fn first_escape(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let w = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if has_less(w, 0x20)
            || has_less(w ^ (LO * b'"' as u64), 1)
            || has_less(w ^ (LO * b'\\' as u64), 1)
        {
            break;
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| ESCAPE[b as usize])
        .map(|i| at + i)
}

/// ``JSON.stringify(s)``: escapes ``"``, ``\\`` and control characters only.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(at) = first_escape(&bytes[start..]) {
        let i = start + at;
        let b = bytes[i];
        out.extend_from_slice(&bytes[start..i]);
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => b"",
        };
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The indexes ``0..n`` of an object's members, on the stack when few.
enum Order {
    Few([usize; 16], usize),
    Many(Vec<usize>),
}

impl Order {
    fn new(n: usize) -> Order {
        if n <= 16 {
            let mut few = [0; 16];
            for (i, slot) in few.iter_mut().enumerate() {
                *slot = i;
            }
            Order::Few(few, n)
        } else {
            Order::Many((0..n).collect())
        }
    }

    fn as_mut(&mut self) -> &mut [usize] {
        match self {
            Order::Few(few, n) => &mut few[..*n],
            Order::Many(many) => many,
        }
    }
}

impl Writer {
    pub fn new(max_depth: usize) -> Writer {
        Writer {
            out: Vec::with_capacity(1024),
            flags: Flags::default(),
            max_depth,
        }
    }

    /// ``{"fields":…,"predecessors":…}`` of one fact into ``self.out`` (cleared
    /// first), its flags into ``self.flags``.
    pub fn fact(
        &mut self,
        fields: &Obj,
        preds: &[(std::borrow::Cow<str>, Pred)],
    ) -> Result<(), Doubt> {
        self.out.clear();
        self.flags = Flags::default();
        self.out.extend_from_slice(b"{\"fields\":");
        self.object(fields, 0)?;
        self.out.extend_from_slice(b",\"predecessors\":{");
        let mut keep = Order::new(preds.len());
        let order = keep.as_mut();
        self.sort_keys(order, |i| &preds[i].0)?;
        for (n, &i) in order.iter().enumerate() {
            let (role, pred) = (&preds[i].0, &preds[i].1);
            if role.is_empty() {
                return Err(Doubt);
            }
            if n > 0 {
                self.out.push(b',');
            }
            write_str(&mut self.out, role);
            self.out.push(b':');
            match pred {
                Pred::One(r) => self.reference(r)?,
                Pred::Many(refs) => {
                    self.out.push(b'[');
                    for (k, r) in refs.iter().enumerate() {
                        if k > 0 {
                            self.out.push(b',');
                            // jinaga.js sorts a list by hash, then type: it must come sorted.
                            let p = &refs[k - 1];
                            let order = p
                                .hash
                                .as_bytes()
                                .cmp(r.hash.as_bytes())
                                .then_with(|| utf16_cmp(&p.ty, &r.ty));
                            if order == Ordering::Greater {
                                return Err(Doubt);
                            }
                        }
                        self.reference(r)?;
                    }
                    self.out.push(b']');
                }
            }
        }
        self.out.extend_from_slice(b"}}");
        Ok(())
    }

    fn reference(&mut self, r: &Ref) -> Result<(), Doubt> {
        if r.ty.is_empty() || r.hash.len() != 88 || !r.hash.is_ascii() {
            return Err(Doubt);
        }
        self.out.extend_from_slice(b"{\"hash\":");
        write_str(&mut self.out, &r.hash);
        self.out.extend_from_slice(b",\"type\":");
        write_str(&mut self.out, &r.ty);
        self.out.push(b'}');
        Ok(())
    }

    /// Sort ``order`` (indexes) by the keys ``key`` gives, JavaScript's way;
    /// a key twice is a doubt (orjson keeps the last silently, the full path refuses).
    fn sort_keys<'k>(
        &mut self,
        order: &mut [usize],
        key: impl Fn(usize) -> &'k str,
    ) -> Result<(), Doubt> {
        if order.iter().any(|&i| astral(key(i))) {
            self.flags.astral_key = true;
            order.sort_unstable_by(|&a, &b| utf16_cmp(key(a), key(b)));
        } else {
            order.sort_unstable_by(|&a, &b| key(a).as_bytes().cmp(key(b).as_bytes()));
        }
        if order.windows(2).any(|w| key(w[0]) == key(w[1])) {
            return Err(Doubt);
        }
        Ok(())
    }

    fn object(&mut self, obj: &Obj, depth: usize) -> Result<(), Doubt> {
        if depth >= self.max_depth {
            return Err(Doubt);
        }
        let mut keep = Order::new(obj.len());
        let order = keep.as_mut();
        self.sort_keys(order, |i| &obj[i].0)?;
        self.out.push(b'{');
        for (n, &i) in order.iter().enumerate() {
            if n > 0 {
                self.out.push(b',');
            }
            write_str(&mut self.out, &obj[i].0);
            self.out.push(b':');
            self.value(&obj[i].1, depth + 1)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn value(&mut self, value: &Val, depth: usize) -> Result<(), Doubt> {
        match value {
            Val::Null => self.out.extend_from_slice(b"null"),
            Val::Bool(true) => self.out.extend_from_slice(b"true"),
            Val::Bool(false) => self.out.extend_from_slice(b"false"),
            Val::Int(i) => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Val::Float(f) => {
                if f.fract() == 0.0 || (-1e-5 < *f && *f < 1e-5) {
                    self.flags.float_layout = true; // as factbus.canonical.freeze decides
                }
                self.out
                    .extend_from_slice(ryu_js::Buffer::new().format_finite(*f).as_bytes());
            }
            Val::Str(s) => write_str(&mut self.out, s),
            Val::List(items) => {
                if depth >= self.max_depth {
                    return Err(Doubt);
                }
                self.flags.nested = true;
                self.out.push(b'[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        self.out.push(b',');
                    }
                    self.value(item, depth + 1)?;
                }
                self.out.push(b']');
            }
            Val::Obj(obj) => {
                self.flags.nested = true;
                self.object(obj, depth)?;
            }
        }
        Ok(())
    }

    /// SHA-512 of the canonical bytes, standard base64 with padding, equals ``claimed``.
    pub fn hash_is(&self, claimed: &str) -> bool {
        let digest = Sha512::digest(&self.out);
        let mut text = [0u8; 88];
        match base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut text) {
            Ok(88) => text[..] == *claimed.as_bytes(),
            _ => false,
        }
    }

    /// The hash of the canonical bytes (88 characters).
    pub fn hash(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&self.out))
    }
}
