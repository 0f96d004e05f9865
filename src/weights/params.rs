//! Hands the model its parameters by diffusers name, checking each shape, and
//! accounts for every tensor: missing, mis-shaped and unused ones are all
//! collected and reported together, never silently skipped.

use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use super::WeightsError;
use super::file::TensorFile;

/// What did not fit between a weights file and the model built from it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub missing: Vec<String>,
    /// `(name, expected shape, shape in the file)`
    pub misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    pub unexpected: Vec<String>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.misshaped.is_empty() && self.unexpected.is_empty()
    }
}

pub struct ParamLoader<'a> {
    file: &'a TensorFile,
    /// diffusers name -> key in the file.
    names: &'a BTreeMap<String, String>,
    device: Device,
    /// The float type the model computes in (`--precision`): weights are
    /// cast to it on load, whatever the file's dtype.
    dtype: FloatDType,
    used: BTreeSet<String>,
    mismatch: Mismatch,
    error: Option<WeightsError>,
    /// Name prefixes whose tensors are checked but not read (a part of the
    /// model this run does not use).
    skip: &'static [&'static str],
    /// diffusers' class of the model being built, for the error.
    class: &'static str,
}

impl<'a> ParamLoader<'a> {
    pub fn new(file: &'a TensorFile, names: &'a BTreeMap<String, String>, device: &Device) -> Self {
        let (used, mismatch) = (BTreeSet::new(), Mismatch::default());
        let device = device.clone();
        Self {
            file,
            names,
            device,
            dtype: FloatDType::F32,
            used,
            mismatch,
            error: None,
            skip: &[],
            class: "AutoencoderKL",
        }
    }

    /// Hands out the parameters in `dtype` (default f32).
    pub fn casting_to(mut self, dtype: FloatDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Names the model being built (`AutoencoderTiny`) in the mismatch error.
    pub fn building(mut self, class: &'static str) -> Self {
        self.class = class;
        self
    }

    /// Checks the tensors under `prefixes` but hands out empty stand-ins for
    /// them, so that an unused half of the model takes no memory.
    pub fn skipping(mut self, prefixes: &'static [&'static str]) -> Self {
        self.skip = prefixes;
        self
    }

    /// The parameter `name` with shape `shape`, in the loader's dtype on its device.
    ///
    /// On a problem, records it and returns an empty stand-in so that loading
    /// goes on and every problem is reported at once by [`ParamLoader::finish`].
    /// The stand-in allocates nothing: the expected shape comes from the file
    /// and may be anything.
    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Tensor<D> {
        match self.values(name, &shape) {
            Some(values) => Tensor::from_data(TensorData::new(values, shape), (&self.device, DType::from(self.dtype))),
            None => Tensor::empty([0; D], (&self.device, DType::from(self.dtype))),
        }
    }

    /// The scalar `name` (shape `[]` or `[1]`) when the file has it, read
    /// even in a skipped part (it is one number).
    pub fn scalar(&mut self, name: &str) -> Option<f32> {
        let key = self.names.get(name)?;
        self.used.insert(name.to_owned());
        let raw = &self.file.tensors[key];
        if raw.shape.len() > 1 || raw.shape.iter().product::<usize>() != 1 {
            self.mismatch.misshaped.push((name.to_owned(), vec![], raw.shape.clone()));
            return None;
        }
        match self.file.to_f32(key, raw) {
            Ok(values) => values.first().copied(),
            Err(err) => {
                self.error.get_or_insert(err);
                None
            }
        }
    }

    /// Whether the file has the tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The `[len]` tensor `name` in f32, read even in a skipped part:
    /// statistics the latent space needs (FLUX.2's batch norm), not
    /// parameters of the network.
    pub fn statistics(&mut self, name: &str, len: usize) -> Option<Vec<f32>> {
        let skip = std::mem::take(&mut self.skip);
        let values = self.values(name, &[len]);
        self.skip = skip;
        values
    }

    /// The tensor `name`, of `shape`, is in the file but not needed (the
    /// temporal convolutions of a video VAE, for images): checked, not read.
    pub fn unused(&mut self, name: &str, shape: &[usize]) {
        let Some(key) = self.names.get(name) else {
            self.mismatch.missing.push(name.to_owned());
            return;
        };
        self.used.insert(name.to_owned());
        let raw = &self.file.tensors[key];
        if raw.shape != shape {
            self.mismatch.misshaped.push((name.to_owned(), shape.to_vec(), raw.shape.clone()));
        }
    }

    fn values(&mut self, name: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let Some(key) = self.names.get(name) else {
            self.mismatch.missing.push(name.to_owned());
            return None;
        };
        self.used.insert(name.to_owned());
        let raw = &self.file.tensors[key];
        // A [C, C] linear may be stored as the [C, C, 1, 1] 1x1 conv of LDM.
        let as_linear =
            shape.len() == 2 && raw.shape.len() == 4 && raw.shape[..2] == *shape && raw.shape[2..] == [1, 1];
        if raw.shape != shape && !as_linear {
            self.mismatch.misshaped.push((name.to_owned(), shape.to_vec(), raw.shape.clone()));
            return None;
        }
        let skipped = self.skip.iter().any(|prefix| name.starts_with(prefix));
        let read =
            if skipped { self.file.check_float(key, raw).map(|()| Vec::new()) } else { self.file.to_f32(key, raw) };
        match read.map(|values| (!skipped).then_some(values)) {
            Ok(values) => values,
            Err(err) => {
                self.error.get_or_insert(err);
                None
            }
        }
    }

    /// Ends loading: an error naming every missing, mis-shaped and unused tensor.
    pub fn finish(mut self) -> Result<(), WeightsError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        self.mismatch.unexpected =
            self.names.iter().filter(|(name, _)| !self.used.contains(*name)).map(|(_, key)| key.clone()).collect();
        if self.mismatch.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch { path: self.file.path.clone(), class: self.class, mismatch: self.mismatch })
        }
    }
}

impl crate::model::Params for ParamLoader<'_> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Tensor<D> {
        ParamLoader::tensor(self, name, shape)
    }

    fn unused(&mut self, name: &str, shape: &[usize]) {
        ParamLoader::unused(self, name, shape);
    }
}
