//! The parameter store: every parameter of a model under a hierarchical name
//! (`down_blocks.0.resnets.1.conv1.weight`), saved to and loaded from safetensors.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use tensor::io::{save, SafetensorsFile};
use tensor::{Error, Result, Tensor};

use crate::Param;

/// A shared, ordered list of named parameters, and a prefix for the names registered through
/// this handle. [`ParamStore::sub`] makes a handle for a child module (`encoder` then `0` then
/// `conv1` registers `encoder.0.conv1.weight`); all handles see the same list.
#[derive(Clone, Default)]
pub struct ParamStore {
    params: Rc<RefCell<Vec<(String, Param)>>>,
    prefix: String,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// A handle whose names are prefixed with `name.` (after this handle's own prefix).
    pub fn sub(&self, name: impl std::fmt::Display) -> ParamStore {
        ParamStore {
            params: Rc::clone(&self.params),
            prefix: self.full_name(&name.to_string()),
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Registers a parameter `prefix.name` with initial value `init`. Panics if the name is
    /// taken (two modules registered under one name is a programming error).
    pub fn param(&self, name: &str, init: Tensor) -> Param {
        let full = self.full_name(name);
        let mut params = self.params.borrow_mut();
        assert!(
            params.iter().all(|(n, _)| *n != full),
            "ParamStore: a parameter named `{full}` is already registered"
        );
        let param = Param::new(init);
        params.push((full, param.clone()));
        param
    }

    /// Every parameter with its full name, in registration order.
    pub fn params(&self) -> Vec<(String, Param)> {
        self.params.borrow().clone()
    }

    /// The parameter with this full name.
    pub fn get(&self, name: &str) -> Option<Param> {
        self.params
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }

    /// The total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.params
            .borrow()
            .iter()
            .map(|(_, p)| p.value().numel())
            .sum()
    }

    /// Forgets every parameter's gradient.
    pub fn zero_grad(&self) {
        for (_, p) in self.params.borrow().iter() {
            p.zero_grad();
        }
    }

    /// Writes every parameter to a safetensors file (atomically), with `metadata`.
    pub fn save(&self, path: impl AsRef<Path>, metadata: &BTreeMap<String, String>) -> Result<()> {
        let params = self.params();
        let values: Vec<(String, Tensor)> =
            params.iter().map(|(n, p)| (n.clone(), p.value())).collect();
        let named: Vec<(&str, &Tensor)> = values.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save(path, &named, metadata)
    }

    /// Sets every parameter from the tensors of the same name in `file`. Fails, changing
    /// nothing, if a parameter is missing from the file or has another shape there. Tensors
    /// in the file that no parameter claims are ignored (see [`ParamStore::unclaimed`]).
    pub fn load_from(&self, file: &SafetensorsFile) -> Result<()> {
        let params = self.params();
        let mut values = Vec::with_capacity(params.len());
        for (name, param) in &params {
            let shape = file.shape(name).map_err(|_| Error::Missing {
                path: file.path().to_string(),
                name: name.clone(),
            })?;
            if shape != param.shape().as_slice() {
                return Err(Error::Format {
                    path: file.path().to_string(),
                    message: format!(
                        "tensor `{name}` has shape {shape:?} in the file, but the model expects {:?}",
                        param.shape()
                    ),
                });
            }
            values.push(file.get(name)?);
        }
        for ((_, param), value) in params.iter().zip(values) {
            param.set_value(value);
        }
        Ok(())
    }

    /// Opens `path` and loads every parameter from it (see [`ParamStore::load_from`]).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<()> {
        self.load_from(&SafetensorsFile::open(path)?)
    }

    /// The names in `file` that no parameter of this store has.
    pub fn unclaimed(&self, file: &SafetensorsFile) -> Vec<String> {
        let params = self.params.borrow();
        let names = file
            .names()
            .into_iter()
            .filter(|n| params.iter().all(|(p, _)| p != n));
        names.map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("store-{}-{name}.safetensors", std::process::id()))
    }

    #[test]
    fn names_are_hierarchical_and_round_trip_through_a_file() {
        let store = ParamStore::new();
        let block = store.sub("down_blocks").sub(0);
        block.param("weight", Tensor::randn(&[2, 3], 1, 0));
        store
            .sub("conv_out")
            .param("bias", Tensor::randn(&[3], 1, 1));
        let names: Vec<String> = store.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["down_blocks.0.weight", "conv_out.bias"]);
        assert_eq!(store.num_elements(), 9);

        let path = temp("roundtrip");
        store.save(&path, &BTreeMap::new()).unwrap();
        let other = ParamStore::new();
        let w = other
            .sub("down_blocks.0")
            .param("weight", Tensor::zeros(&[2, 3]));
        let b = other.sub("conv_out").param("bias", Tensor::zeros(&[3]));
        other.load(&path).unwrap();
        assert_eq!(
            w.value().data(),
            store.get("down_blocks.0.weight").unwrap().value().data()
        );
        assert_eq!(
            b.value().data(),
            store.get("conv_out.bias").unwrap().value().data()
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn loading_reports_missing_names_and_wrong_shapes_and_changes_nothing() {
        let store = ParamStore::new();
        store.param("a", Tensor::ones(&[2]));
        let path = temp("bad");
        store.save(&path, &BTreeMap::new()).unwrap();

        let missing = ParamStore::new();
        missing.param("a", Tensor::zeros(&[2]));
        missing.param("b", Tensor::zeros(&[2]));
        let err = missing.load(&path).unwrap_err().to_string();
        assert!(err.contains("no tensor named `b`"), "{err}");
        assert_eq!(
            missing.get("a").unwrap().value().data(),
            &[0.0, 0.0],
            "nothing may change"
        );

        let reshaped = ParamStore::new();
        reshaped.param("a", Tensor::zeros(&[1, 2]));
        let err = reshaped.load(&path).unwrap_err().to_string();
        assert!(
            err.contains("has shape [2] in the file, but the model expects [1, 2]"),
            "{err}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    #[should_panic(expected = "already registered")]
    fn duplicate_names_panic() {
        let store = ParamStore::new();
        store.param("w", Tensor::zeros(&[1]));
        store.param("w", Tensor::zeros(&[1]));
    }
}
