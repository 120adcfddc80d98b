//! The envelope's JSON, parsed by serde_json into borrowed values.
//!
//! Every visitor here refuses (a serde error, which the caller turns into
//! "doubt") anything the plain path does not take: a missing, repeated or
//! unknown key in the envelope, a fact or a reference; a version other than
//! the integer 1; an integer beyond ±(2^53-1); a float that may have been an
//! integer in the text (negative zero, integral beyond 2^53); anything that is
//! not JSON (serde_json's own refusals: NaN, lone surrogates, invalid UTF-8,
//! nesting beyond 128). Duplicate keys inside fields and predecessors are
//! found later, when the keys are sorted for the canonical form.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// JavaScript's Number.MAX_SAFE_INTEGER.
pub const MAX_SAFE: u64 = (1 << 53) - 1;

/// A string, borrowed from the body when it holds no escape.
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON value of a fact's fields, in the order of the text.
pub enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    List(Vec<Val<'a>>),
    Obj(Obj<'a>),
}

/// An object's members in the order of the text (duplicates not yet refused).
pub type Obj<'a> = Vec<(Cow<'a, str>, Val<'a>)>;

fn float_ok(v: f64) -> bool {
    // serde_json reads "-0" and integers beyond 64 bits as floats where orjson
    // (the full path) reads an int or refuses: such floats are left to it.
    v.is_finite()
        && !(v == 0.0 && v.is_sign_negative())
        && !(v.fract() == 0.0 && v.abs() >= 9007199254740992.0)
}

impl<'de> Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Val<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Val<'de>, E> {
                Ok(Val::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
                Ok(Val::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val<'de>, E> {
                if v <= MAX_SAFE {
                    Ok(Val::Int(v as i64))
                } else {
                    Err(E::custom("unsafe integer"))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val<'de>, E> {
                if v >= -(MAX_SAFE as i64) {
                    Ok(Val::Int(v))
                } else {
                    Err(E::custom("unsafe integer"))
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Val<'de>, E> {
                if float_ok(v) {
                    Ok(Val::Float(v))
                } else {
                    Err(E::custom("float left to the full path"))
                }
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(item) = seq.next_element::<Val<'de>>()? {
                    out.push(item);
                }
                Ok(Val::List(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
                Ok(Val::Obj(members(&mut map)?))
            }
        }
        d.deserialize_any(V)
    }
}

fn members<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Obj<'de>, A::Error> {
    let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
    while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
        out.push((key, map.next_value::<Val<'de>>()?));
    }
    Ok(out)
}

/// An object (a fact's ``fields``); anything else is refused.
pub struct Fields<'a>(pub Obj<'a>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                Ok(Fields(members(&mut map)?))
            }
        }
        d.deserialize_map(V)
    }
}

/// A predecessor reference: exactly ``type`` and ``hash``, both strings.
pub struct Ref<'a> {
    pub ty: Cow<'a, str>,
    pub hash: Cow<'a, str>,
}

fn ref_from_map<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Ref<'de>, A::Error> {
    let (mut ty, mut hash) = (None, None);
    while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
        let slot = match &*key {
            "type" => &mut ty,
            "hash" => &mut hash,
            _ => return Err(de::Error::custom("unknown key")),
        };
        if slot.is_some() {
            return Err(de::Error::custom("duplicate key"));
        }
        *slot = Some(map.next_value::<Str<'de>>()?.0);
    }
    match (ty, hash) {
        (Some(ty), Some(hash)) => Ok(Ref { ty, hash }),
        _ => Err(de::Error::custom("missing key")),
    }
}

impl<'de> Deserialize<'de> for Ref<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ref<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a reference")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ref<'de>, A::Error> {
                ref_from_map(&mut map)
            }
        }
        d.deserialize_map(V)
    }
}

/// A role's value: one reference or a list of them.
pub enum Pred<'a> {
    One(Ref<'a>),
    Many(Vec<Ref<'a>>),
}

impl<'de> Deserialize<'de> for Pred<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pred<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a reference or a list of references")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pred<'de>, A::Error> {
                Ok(Pred::One(ref_from_map(&mut map)?))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pred<'de>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(item) = seq.next_element::<Ref<'de>>()? {
                    out.push(item);
                }
                Ok(Pred::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A fact's predecessors, role by role in the order of the text.
pub struct Preds<'a>(pub Vec<(Cow<'a, str>, Pred<'a>)>);

impl<'de> Deserialize<'de> for Preds<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Preds<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of predecessors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Preds<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(2));
                while let Some(Str(role)) = map.next_key::<Str<'de>>()? {
                    out.push((role, map.next_value::<Pred<'de>>()?));
                }
                Ok(Preds(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One wire fact: exactly ``type``, ``hash``, ``fields``, ``predecessors``.
pub struct WireFact<'a> {
    pub ty: Cow<'a, str>,
    pub hash: Cow<'a, str>,
    pub fields: Obj<'a>,
    pub preds: Vec<(Cow<'a, str>, Pred<'a>)>,
}

impl<'de> Deserialize<'de> for WireFact<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireFact<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a fact")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireFact<'de>, A::Error> {
                let (mut ty, mut hash, mut fields, mut preds) = (None, None, None, None);
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let dup = match &*key {
                        "type" => ty.replace(map.next_value::<Str<'de>>()?.0).is_some(),
                        "hash" => hash.replace(map.next_value::<Str<'de>>()?.0).is_some(),
                        "fields" => fields.replace(map.next_value::<Fields<'de>>()?.0).is_some(),
                        "predecessors" => {
                            preds.replace(map.next_value::<Preds<'de>>()?.0).is_some()
                        }
                        _ => return Err(de::Error::custom("unknown key")),
                    };
                    if dup {
                        return Err(de::Error::custom("duplicate key"));
                    }
                }
                match (ty, hash, fields, preds) {
                    (Some(ty), Some(hash), Some(fields), Some(preds)) => Ok(WireFact {
                        ty,
                        hash,
                        fields,
                        preds,
                    }),
                    _ => Err(de::Error::custom("missing key")),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// Version 1 only, as the integer 1.
struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the integer 1")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Version, E> {
                if v == 1 {
                    Ok(Version)
                } else {
                    Err(E::custom("version"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An envelope: exactly ``v`` (1) and ``facts`` (a non-empty list).
pub struct Envelope<'a>(pub Vec<WireFact<'a>>);

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an envelope")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
                let (mut version, mut facts) = (false, None);
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let dup = match &*key {
                        "v" => {
                            map.next_value::<Version>()?;
                            std::mem::replace(&mut version, true)
                        }
                        "facts" => facts
                            .replace(map.next_value::<Vec<WireFact<'de>>>()?)
                            .is_some(),
                        _ => return Err(de::Error::custom("unknown key")),
                    };
                    if dup {
                        return Err(de::Error::custom("duplicate key"));
                    }
                }
                match facts {
                    Some(facts) if version && !facts.is_empty() => Ok(Envelope(facts)),
                    _ => Err(de::Error::custom("missing key or no facts")),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// The envelope in ``body``, or ``None`` for anything the plain path leaves
/// to the full path.
pub fn parse(body: &[u8]) -> Option<Envelope<'_>> {
    // The whole body must be UTF-8 (orjson refuses it otherwise): checked
    // once here, so serde_json need not check each string again.
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let envelope = Envelope::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(envelope)
}
