//! Strict weight loading: every parameter the model asks for is checked against the checkpoint by key and shape,
//! and every checkpoint key must be used. Also builds random weights for tests and benchmarks.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::state_dict::StateDict;

enum Source<'a> {
    Checkpoint(&'a StateDict),
    Random(Box<RefCell<StdRng>>),
}

struct Inner<'a> {
    source: Source<'a>,
    device: Device,
    used: RefCell<BTreeSet<String>>,
    /// Random tensors handed out so far (random mode), so they can be saved as a checkpoint.
    generated: RefCell<Vec<(String, Tensor)>>,
}

/// A scoped view on a weight source (a checkpoint or a random generator), like a `VarBuilder` with strict checks.
#[derive(Clone)]
pub struct Weights<'a> {
    inner: Rc<Inner<'a>>,
    prefix: String,
}

impl<'a> Weights<'a> {
    /// Weights read from `state_dict` (converted to f32 on `device`).
    pub fn from_state_dict(state_dict: &'a StateDict, device: &Device) -> Self {
        Self::new(Source::Checkpoint(state_dict), device)
    }

    /// Random weights from a seeded generator (deterministic for a given seed).
    pub fn random(seed: u64, device: &Device) -> Weights<'static> {
        Weights::new(
            Source::Random(Box::new(RefCell::new(StdRng::seed_from_u64(seed)))),
            device,
        )
    }

    fn new(source: Source<'a>, device: &Device) -> Self {
        Self {
            inner: Rc::new(Inner {
                source,
                device: device.clone(),
                used: RefCell::new(BTreeSet::new()),
                generated: RefCell::new(Vec::new()),
            }),
            prefix: String::new(),
        }
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// A view whose keys are prefixed by `name.`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            inner: self.inner.clone(),
            prefix,
        }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn source_name(&self) -> String {
        match &self.inner.source {
            Source::Checkpoint(sd) => sd.source_name().to_string(),
            Source::Random(_) => "random weights".to_string(),
        }
    }

    /// The tensor `name` with exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_with(name, shape, |found| found == shape)
    }

    /// The tensor `name` with any shape accepted by `accept`; `shape` is the nominal shape (used for random
    /// weights and error messages).
    pub fn get_with(
        &self,
        name: &str,
        shape: &[usize],
        accept: impl Fn(&[usize]) -> bool,
    ) -> Result<Tensor> {
        let key = self.key(name);
        match &self.inner.source {
            Source::Checkpoint(sd) => {
                let t = sd.get(&key).ok_or_else(|| Error::MissingKey {
                    key: key.clone(),
                    expected: shape.to_vec(),
                    source_name: sd.source_name().to_string(),
                })?;
                if !accept(t.dims()) {
                    return Err(Error::ShapeMismatch {
                        key,
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                        source_name: sd.source_name().to_string(),
                    });
                }
                self.inner.used.borrow_mut().insert(key);
                Ok(t.to_dtype(DType::F32)?
                    .to_device(&self.inner.device)?
                    .contiguous()?)
            }
            Source::Random(rng) => {
                let values = random_values(&key, shape, &mut rng.borrow_mut());
                let t = Tensor::from_vec(values, shape, &self.inner.device)?;
                self.inner.generated.borrow_mut().push((key, t.clone()));
                Ok(t)
            }
        }
    }

    /// The random tensors generated so far (empty for a checkpoint source), in the official key layout.
    pub fn generated(&self) -> StateDict {
        StateDict::from_tensors(
            "random weights",
            self.inner.generated.borrow().iter().cloned(),
        )
    }

    /// After building the model: fail if the checkpoint holds keys the model did not use.
    pub fn finish(&self) -> Result<()> {
        if let Source::Checkpoint(sd) = &self.inner.source {
            let used = self.inner.used.borrow();
            let unexpected: Vec<String> =
                sd.keys().filter(|k| !used.contains(*k)).cloned().collect();
            if !unexpected.is_empty() {
                return Err(Error::UnexpectedKeys {
                    keys: unexpected,
                    source_name: self.source_name(),
                });
            }
        }
        Ok(())
    }
}

/// Random values with a scale that keeps activations of order one through the network.
fn random_values(key: &str, shape: &[usize], rng: &mut StdRng) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let is_norm = key.contains("norm")
        || key.contains("neck.1")
        || key.contains("neck.3")
        || key.contains("output_upscaling.1")
        || key.contains("mask_downscaling.1")
        || key.contains("mask_downscaling.4");
    let (mean, std) = if leaf == "bias" {
        (0.0, 0.02)
    } else if is_norm {
        (1.0, 0.1)
    } else if shape.len() >= 2
        && !key.contains("embed")
        && !key.contains("token")
        && !key.contains("rel_pos")
    {
        let fan_in: usize = if key.contains("output_upscaling") {
            shape[0]
        } else {
            shape[1..].iter().product()
        };
        (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    } else {
        (0.0, 0.5)
    };
    (0..n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(rng);
            mean + std * z
        })
        .collect()
}
