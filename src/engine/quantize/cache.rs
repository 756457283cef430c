//! Quantized matrices kept in a GGUF file beside the model, so the second load of a model under a
//! scheme reads them instead of quantizing again.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::Scheme;

/// The cache of one load. The file is valid as a whole: its `owrun.stamp` names the scheme and
/// the source files' names and sizes; a file with another stamp (or none, or unreadable) is
/// replaced.
pub struct QuantCache {
    path: Option<PathBuf>,
    stamp: String,
    file: Option<(Content, std::fs::File)>,
    /// Every matrix of this load, in load order, for rewriting the file.
    all: Vec<(String, Arc<QTensor>)>,
    /// Some matrix was quantized in this load (the file must be written).
    dirty: bool,
}

const STAMP_KEY: &str = "owrun.stamp";

impl QuantCache {
    /// The cache at `path` (None: nothing is read or written) for `scheme` applied to `files`.
    pub fn open(path: Option<PathBuf>, scheme: Scheme, files: &[PathBuf]) -> QuantCache {
        let stamp = stamp(scheme, files);
        let file = path.as_ref().and_then(|p| {
            let mut f = std::fs::File::open(p).ok()?;
            let content = Content::read(&mut f).ok()?;
            let theirs = content.metadata.get(STAMP_KEY)?.to_string().ok()?.clone();
            (theirs == stamp).then_some((content, f))
        });
        QuantCache {
            path,
            stamp,
            file,
            all: Vec::new(),
            dirty: false,
        }
    }

    /// Whether the cache file is there and matches.
    pub fn hit(&self) -> bool {
        self.file.is_some()
    }

    /// The matrix `name` of type `ty` and shape `shape` from the file, if it holds it.
    pub fn get(
        &mut self,
        name: &str,
        ty: GgmlDType,
        shape: &[usize],
        device: &Device,
    ) -> Option<Arc<QTensor>> {
        let (content, f) = self.file.as_mut()?;
        let info = content.tensor_infos.get(name)?;
        if info.ggml_dtype != ty || info.shape.dims() != shape {
            return None;
        }
        let q = Arc::new(content.tensor(f, name, device).ok()?);
        self.all.push((name.to_string(), q.clone()));
        Some(q)
    }

    pub fn add(&mut self, name: &str, q: Arc<QTensor>) {
        self.all.push((name.to_string(), q));
        self.dirty = true;
    }

    /// Write the file when this load quantized anything (to a temporary name, then renamed).
    /// Returns where it was written.
    pub fn save(self) -> Result<Option<PathBuf>> {
        let Some(path) = self.path.filter(|_| self.dirty) else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            let stamp = Value::String(self.stamp.clone());
            let tensors: Vec<(&str, &QTensor)> = self
                .all
                .iter()
                .map(|(n, q)| (n.as_str(), q.as_ref()))
                .collect();
            candle_core::quantized::gguf_file::write(&mut out, &[(STAMP_KEY, &stamp)], &tensors)?;
            std::io::Write::flush(&mut out)?;
            out.get_ref().sync_all()?;
            Ok(())
        };
        match write().and_then(|()| Ok(std::fs::rename(&tmp, &path)?)) {
            Ok(()) => Ok(Some(path)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e).with_context(|| format!("cannot write {}", path.display()))
            }
        }
    }
}

/// What a cache file must match: the scheme, owrun's quantizer version, and the source files'
/// names, sizes and modification times (a fine-tune written over the old files keeps their
/// names and often their sizes; its new times tell it apart).
fn stamp(scheme: Scheme, files: &[PathBuf]) -> String {
    let mut stamp = format!("owrun-quant-1 {}", scheme.name());
    for f in files {
        let meta = std::fs::metadata(f).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        let modified = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        stamp.push_str(&format!(" {name}:{len}:{modified}"));
    }
    stamp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_changes_when_a_file_is_rewritten_at_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, [1u8; 64]).unwrap();
        let files = [file.clone()];
        let before = stamp(Scheme::Q8_0, &files);
        assert_eq!(before, stamp(Scheme::Q8_0, &files));
        std::fs::write(&file, [2u8; 64]).unwrap();
        // The write's time, made certain to differ from the first (file clocks are coarse).
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_ne!(before, stamp(Scheme::Q8_0, &files));
    }
}
