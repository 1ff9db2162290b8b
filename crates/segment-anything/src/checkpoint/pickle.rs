//! A restricted, non-executing reader for the pickles written by `torch.save`.

use std::collections::HashMap;
use std::rc::Rc;

/// Element types of torch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TorchDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

/// A `torch.*Storage` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StorageKind {
    pub torch_name: &'static str,
    pub dtype: TorchDtype,
    pub elem_size: usize,
}

const STORAGES: &[StorageKind] = &[
    StorageKind {
        torch_name: "FloatStorage",
        dtype: TorchDtype::F32,
        elem_size: 4,
    },
    StorageKind {
        torch_name: "HalfStorage",
        dtype: TorchDtype::F16,
        elem_size: 2,
    },
    StorageKind {
        torch_name: "BFloat16Storage",
        dtype: TorchDtype::BF16,
        elem_size: 2,
    },
    StorageKind {
        torch_name: "DoubleStorage",
        dtype: TorchDtype::F64,
        elem_size: 8,
    },
    StorageKind {
        torch_name: "LongStorage",
        dtype: TorchDtype::I64,
        elem_size: 8,
    },
    StorageKind {
        torch_name: "IntStorage",
        dtype: TorchDtype::I32,
        elem_size: 4,
    },
    StorageKind {
        torch_name: "ShortStorage",
        dtype: TorchDtype::I16,
        elem_size: 2,
    },
    StorageKind {
        torch_name: "CharStorage",
        dtype: TorchDtype::I8,
        elem_size: 1,
    },
    StorageKind {
        torch_name: "ByteStorage",
        dtype: TorchDtype::U8,
        elem_size: 1,
    },
    StorageKind {
        torch_name: "BoolStorage",
        dtype: TorchDtype::Bool,
        elem_size: 1,
    },
    StorageKind {
        torch_name: "UntypedStorage",
        dtype: TorchDtype::U8,
        elem_size: 1,
    },
];

/// The only callables a checkpoint may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageKind),
}

fn resolve_global(module: &str, name: &str) -> Result<Global, String> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", n) | ("torch.storage", n) if n.ends_with("Storage") => STORAGES
            .iter()
            .find(|k| k.torch_name == n)
            .map(|k| Global::Storage(*k))
            .ok_or_else(|| {
                format!("unsupported tensor storage type `{module}.{name}` (supported: f32, f16, bf16, f64, i64, i32, i16, i8, u8, bool)")
            }),
        _ => Err(format!(
            "refusing to load: pickle references `{module}.{name}`, only tensor rebuilding is allowed"
        )),
    }
}

/// A storage as described by the pickle's persistent id.
#[derive(Debug, Clone)]
pub(super) struct StorageRef {
    pub key: String,
    pub kind: StorageKind,
    pub numel: usize,
}

/// A tensor view: storage (arena index), element offset, size, stride.
#[derive(Debug, Clone)]
pub(super) struct TensorRef {
    pub storage: usize,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Pickle values. Containers live in an arena so that values stay flat (no recursive drops, shared mutation as in
/// Python, cycles harmless).
#[derive(Debug, Clone)]
#[allow(dead_code)] // scalar payloads are only kept for `Debug` output
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    Obj(usize),
}

#[derive(Debug)]
enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

pub(super) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    arena: Vec<Obj>,
}

type R<T> = Result<T, String>;

impl<'a> Unpickler<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
        }
    }

    pub fn storage(&self, idx: usize) -> &StorageRef {
        match &self.arena[idx] {
            Obj::Storage(s) => s,
            _ => unreachable!("tensor refs always point at storages"),
        }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "pickle truncated at byte {} (needed {n} more bytes)",
                    self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().map_err(|_| "short read")?,
        ))
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "short read")?,
        ))
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "short read")?,
        ))
    }
    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("pickle truncated at byte {}: unterminated line", self.pos))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| format!("invalid UTF-8 at byte {}", self.pos))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: u64) -> R<Value> {
        let n = usize::try_from(n).map_err(|_| "string too long".to_string())?;
        let at = self.pos;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| format!("invalid UTF-8 string at byte {at}"))?;
        Ok(Value::Str(Rc::from(s)))
    }
    fn bytes(&mut self, n: u64) -> R<Value> {
        let n = usize::try_from(n).map_err(|_| "bytes too long".to_string())?;
        Ok(Value::Bytes(Rc::from(self.take(n)?)))
    }
    fn pop(&mut self) -> R<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(format!(
                "malformed pickle at byte {}: pop across a MARK",
                self.pos
            ));
        }
        self.stack
            .pop()
            .ok_or_else(|| format!("malformed pickle at byte {}: stack underflow", self.pos))
    }
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| format!("malformed pickle at byte {}: no MARK", self.pos))?;
        Ok(self.stack.split_off(m))
    }
    fn top(&self) -> R<&Value> {
        self.stack
            .last()
            .ok_or_else(|| format!("malformed pickle at byte {}: empty stack", self.pos))
    }
    fn alloc(&mut self, o: Obj) -> Value {
        self.arena.push(o);
        Value::Obj(self.arena.len() - 1)
    }
    fn memo_get(&self, i: u32) -> R<Value> {
        self.memo.get(&i).cloned().ok_or_else(|| {
            format!(
                "malformed pickle at byte {}: memo entry {i} not found",
                self.pos
            )
        })
    }

    fn type_name(&self, v: &Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Global(_) => "global",
            Value::Obj(i) => match &self.arena[*i] {
                Obj::Tuple(_) => "tuple",
                Obj::List(_) => "list",
                Obj::Dict(_) => "dict",
                Obj::Storage(_) => "storage",
                Obj::Tensor(_) => "tensor",
            },
        }
    }

    fn tuple_items(&self, v: &Value, what: &str) -> R<Vec<Value>> {
        match v {
            Value::Obj(i) => match &self.arena[*i] {
                Obj::Tuple(t) | Obj::List(t) => Ok(t.clone()),
                _ => Err(format!(
                    "{what}: expected a tuple, got {}",
                    self.type_name(v)
                )),
            },
            _ => Err(format!(
                "{what}: expected a tuple, got {}",
                self.type_name(v)
            )),
        }
    }

    fn usize_of(&self, v: &Value, what: &str) -> R<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what}: negative value {i}")),
            _ => Err(format!(
                "{what}: expected an int, got {}",
                self.type_name(v)
            )),
        }
    }

    fn usizes(&self, v: &Value, what: &str) -> R<Vec<usize>> {
        self.tuple_items(v, what)?
            .iter()
            .map(|x| self.usize_of(x, what))
            .collect()
    }

    fn dict_mut(&mut self, v: &Value, op: &str) -> R<&mut Vec<(Value, Value)>> {
        let name = self.type_name(v);
        match v {
            Value::Obj(i) => match &mut self.arena[*i] {
                Obj::Dict(d) => Ok(d),
                _ => Err(format!("malformed pickle: {op} on a {name}")),
            },
            _ => Err(format!("malformed pickle: {op} on a {name}")),
        }
    }

    /// Run the pickle to its STOP opcode and return the root value.
    pub fn load(&mut self) -> R<Value> {
        loop {
            let at = self.pos;
            let op = self
                .u8()
                .map_err(|_| format!("pickle truncated at byte {at}: no STOP opcode"))?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: just a length hint
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(module, name)?;
                    self.stack.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = resolve_global(m, n)?;
                            self.stack.push(Value::Global(g));
                        }
                        _ => return Err(format!("malformed pickle at byte {at}: STACK_GLOBAL needs two strings")),
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large".to_string())?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'}' => {
                    let v = self.alloc(Obj::Dict(Vec::new()));
                    self.stack.push(v);
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()));
                    self.stack.push(v);
                }
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes at byte {at} is too large"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'B' => {
                    let n = self.u32()? as u64;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.u8()? as u64;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x8e => {
                    let n = self.u64()?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().map_err(|_| "short read")?);
                    self.stack.push(Value::Float(v));
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let d = self.top()?.clone();
                    self.dict_mut(&d, "SETITEM")?.push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(format!("malformed pickle at byte {at}: SETITEMS with an odd item count"));
                    }
                    let d = self.top()?.clone();
                    let dict = self.dict_mut(&d, "SETITEMS")?;
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                    let l = self.top()?.clone();
                    let name = self.type_name(&l);
                    match l {
                        Value::Obj(i) => match &mut self.arena[i] {
                            Obj::List(v) => v.extend(items),
                            _ => return Err(format!("malformed pickle at byte {at}: APPEND on a {name}")),
                        },
                        _ => return Err(format!("malformed pickle at byte {at}: APPEND on a {name}")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(&callable, &args).map_err(|m| format!("at byte {at}: {m}"))?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?.clone();
                    match (self.type_name(&obj), self.type_name(&state)) {
                        // OrderedDict attributes such as the state dict's `_metadata`: ignored.
                        ("dict", "dict" | "None" | "tuple") => {}
                        (o, s) => {
                            return Err(format!("malformed pickle at byte {at}: BUILD of a {o} with a {s} state"))
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid).map_err(|m| format!("at byte {at}: {m}"))?;
                    self.stack.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {at} (not something torch.save writes)"
                    ))
                }
            }
        }
    }

    fn persistent_load(&mut self, pid: &Value) -> R<Value> {
        let items = self.tuple_items(pid, "persistent id")?;
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(_location), numel]
                if &**tag == "storage" =>
            {
                let numel = self.usize_of(numel, "storage size")?;
                Ok(self.alloc(Obj::Storage(StorageRef { key: key.to_string(), kind: *kind, numel })))
            }
            _ => Err("unsupported persistent id (expected ('storage', torch.*Storage, key, location, numel))".into()),
        }
    }

    fn reduce(&mut self, callable: &Value, args: &Value) -> R<Value> {
        let g = match callable {
            Value::Global(g) => *g,
            other => {
                return Err(format!(
                    "REDUCE on a {}, which is not callable",
                    self.type_name(other)
                ))
            }
        };
        let args = self.tuple_items(args, "REDUCE arguments")?;
        match g {
            Global::OrderedDict => {
                let mut items = Vec::new();
                match args.as_slice() {
                    [] => {}
                    [pairs] => {
                        for p in self.tuple_items(pairs, "OrderedDict items")? {
                            match self.tuple_items(&p, "OrderedDict item")?.as_slice() {
                                [k, v] => items.push((k.clone(), v.clone())),
                                _ => return Err("OrderedDict item is not a pair".into()),
                            }
                        }
                    }
                    _ => return Err("OrderedDict() called with too many arguments".into()),
                }
                Ok(self.alloc(Obj::Dict(items)))
            }
            Global::RebuildTensorV2 => {
                if !(6..=7).contains(&args.len()) {
                    return Err(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    ));
                }
                let storage = match &args[0] {
                    Value::Obj(i) if matches!(self.arena[*i], Obj::Storage(_)) => *i,
                    other => {
                        return Err(format!(
                            "_rebuild_tensor_v2: expected a storage, got {}",
                            self.type_name(other)
                        ))
                    }
                };
                let offset = self.usize_of(&args[1], "storage offset")?;
                let size = self.usizes(&args[2], "tensor size")?;
                let stride = self.usizes(&args[3], "tensor stride")?;
                if !matches!(args[4], Value::Bool(_)) {
                    return Err("_rebuild_tensor_v2: requires_grad is not a bool".into());
                }
                Ok(self.alloc(Obj::Tensor(TensorRef {
                    storage,
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter => match args.as_slice() {
                [t @ Value::Obj(i), Value::Bool(_), _hooks]
                    if matches!(self.arena[*i], Obj::Tensor(_)) =>
                {
                    Ok(t.clone())
                }
                _ => Err("_rebuild_parameter: expected (tensor, requires_grad, hooks)".into()),
            },
            Global::Storage(k) => Err(format!("calling torch.{} is not allowed", k.torch_name)),
        }
    }

    fn dict_items(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match v {
            Value::Obj(i) => match &self.arena[*i] {
                Obj::Dict(d) => Some(d),
                _ => None,
            },
            _ => None,
        }
    }

    fn tensor(&self, v: &Value) -> Option<&TensorRef> {
        match v {
            Value::Obj(i) => match &self.arena[*i] {
                Obj::Tensor(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The `(key, tensor)` entries of the state dict held by the root value (unwrapping `{"state_dict": ...}` or
/// `{"model": ...}`). Later duplicates of a key win, as in Python.
pub(super) fn state_dict_entries(up: &Unpickler<'_>, root: &Value) -> R<Vec<(String, TensorRef)>> {
    let items = up.dict_items(root).ok_or_else(|| {
        format!(
            "the checkpoint holds a {}, not a dict of tensors",
            up.type_name(root)
        )
    })?;
    let all_tensors = items.iter().all(|(_, v)| up.tensor(v).is_some());
    let items = if all_tensors {
        items
    } else {
        let inner = ["state_dict", "model"].iter().find_map(|name| {
            items.iter().rev().find_map(|(k, v)| match k {
                Value::Str(s) if &**s == *name => up.dict_items(v).map(|d| (*name, d)),
                _ => None,
            })
        });
        match inner {
            Some((_, d)) => d,
            None => items,
        }
    };
    let mut out: Vec<(String, TensorRef)> = Vec::with_capacity(items.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (k, v) in items {
        let key = match k {
            Value::Str(s) => s.to_string(),
            other => {
                return Err(format!(
                    "state dict key is a {}, not a string",
                    up.type_name(other)
                ))
            }
        };
        let t = up
            .tensor(v)
            .ok_or_else(|| format!("entry `{key}` is a {}, not a tensor", up.type_name(v)))?
            .clone();
        match seen.get(&key) {
            Some(&i) => out[i] = (key, t),
            None => {
                seen.insert(key.clone(), out.len());
                out.push((key, t));
            }
        }
    }
    Ok(out)
}
