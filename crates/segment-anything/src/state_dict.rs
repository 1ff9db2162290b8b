//! A named collection of tensors, as read from a checkpoint.

use std::collections::BTreeMap;

use candle_core::Tensor;

/// Tensors by key, in the official PyTorch key layout (`image_encoder.blocks.0.attn.qkv.weight`, ...).
///
/// `source_name` names where the tensors came from (usually the file path) so errors can point at it.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    tensors: BTreeMap<String, Tensor>,
    source_name: String,
}

impl StateDict {
    /// An empty state dict whose errors will name `source_name`.
    pub fn new(source_name: impl Into<String>) -> Self {
        Self {
            tensors: BTreeMap::new(),
            source_name: source_name.into(),
        }
    }

    /// Build from `(key, tensor)` pairs.
    pub fn from_tensors(
        source_name: impl Into<String>,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Self {
        Self {
            tensors: tensors.into_iter().collect(),
            source_name: source_name.into(),
        }
    }

    /// Where the tensors came from.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The tensor stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Insert or replace a tensor.
    pub fn insert(&mut self, key: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.tensors.insert(key.into(), tensor)
    }

    /// Remove and return a tensor.
    pub fn remove(&mut self, key: &str) -> Option<Tensor> {
        self.tensors.remove(key)
    }

    /// Keys in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// `(key, tensor)` pairs in sorted key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Consume into the underlying map.
    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }
}
