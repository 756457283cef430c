//! LoRA adapters as they are shipped: a PEFT folder (adapter_config.json beside
//! adapter_model.safetensors) or a GGUF file written by llama.cpp's convert_lora_to_gguf.py
//! (general.type = adapter). Read into one shape whatever the source: for each adapted linear
//! layer, by its Hugging Face name, the down-projection A (rank × in), the up-projection B
//! (out × rank) and the factor B·A is scaled by.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use super::ggml::GgmlType;
use super::gguf::{self, GgufFile, MetaValue as GValue};
use super::json::read_json;
use super::safetensors::SafetensorsFiles;

/// One adapted layer: y += scale · B·(A·x).
pub struct LoraPair {
    /// rank × in, row-major.
    pub a: Vec<f32>,
    /// out × rank, row-major.
    pub b: Vec<f32>,
    pub rank: usize,
    pub inputs: usize,
    pub outputs: usize,
    pub scale: f32,
    /// How A and B were stored: 16-bit matrices are kept 16-bit at run time (half the bytes a
    /// token reads), their values exactly as `a` and `b` hold them.
    pub stored: Stored,
}

/// The precision an adapter's two matrices were stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    F32,
    F16,
    Bf16,
}

impl Stored {
    /// Both matrices' precision: 16-bit where both are the same 16-bit type, else f32.
    fn of(a: Stored, b: Stored) -> Stored {
        if a == b {
            a
        } else {
            Stored::F32
        }
    }

    fn of_dtype(dtype: DType) -> Stored {
        match dtype {
            DType::F16 => Stored::F16,
            DType::BF16 => Stored::Bf16,
            _ => Stored::F32,
        }
    }

    fn of_ggml(ty: Option<GgmlType>) -> Stored {
        match ty {
            Some(GgmlType::F16) => Stored::F16,
            Some(GgmlType::BF16) => Stored::Bf16,
            _ => Stored::F32,
        }
    }
}

pub struct Adapter {
    pub source: PathBuf,
    /// The base it was trained on, as the adapter names it (PEFT's base_model_name_or_path,
    /// a GGUF's general.base_model.0.repo_url / name).
    pub base_model: Option<String>,
    /// The GGUF architecture it was converted for (GGUF adapters only).
    pub architecture: Option<String>,
    /// The license its own files state (a GGUF's general.license, a PEFT README's front matter).
    pub license: Option<String>,
    /// Its alpha (PEFT's lora_alpha, a GGUF's adapter.lora.alpha), when it states one.
    pub alpha: Option<f64>,
    /// Whether it scales by alpha / sqrt(r) (PEFT's use_rslora); None for a GGUF adapter, whose
    /// converter does not record it (llama.cpp scales by alpha / r).
    pub rslora: Option<bool>,
    /// By the Hugging Face name of the linear layer ("model.layers.0.self_attn.q_proj").
    pub layers: BTreeMap<String, LoraPair>,
}

/// Heads of the base model, for undoing the row order llama.cpp's converter gives Llama's q and
/// k projections (it reorders an adapter's B as it reorders the weights).
#[derive(Clone, Copy)]
pub struct BaseHeads {
    pub heads: usize,
    pub kv_heads: usize,
}

impl Adapter {
    /// Read the adapter at `path` (a PEFT folder or a GGUF adapter file), its factor times
    /// `scale` (the user's multiplier, 1 by default).
    pub fn open(path: &Path, scale: f32, heads: BaseHeads) -> Result<Adapter> {
        let adapter = if gguf::is_gguf_file(path) {
            open_gguf(path, scale, heads)
        } else if path.join("adapter_config.json").is_file() {
            open_peft(path, scale)
        } else if path.is_dir() {
            bail!(
                "{} is not a LoRA adapter: it has no adapter_config.json (a PEFT adapter folder \
                 has adapter_config.json and adapter_model.safetensors)",
                path.display()
            )
        } else if path.exists() {
            bail!(
                "{} is not a LoRA adapter: give a PEFT adapter folder or a GGUF adapter file",
                path.display()
            )
        } else {
            bail!("{}: no such file or folder", path.display())
        };
        adapter.with_context(|| format!("cannot read the LoRA adapter {}", path.display()))
    }
}

/// Whether `path` is a LoRA adapter as `--lora` takes one: a folder with adapter_config.json, or
/// a GGUF file whose general.type is "adapter". Reads only a GGUF's header.
pub fn is_adapter(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("adapter_config.json").is_file();
    }
    gguf::is_gguf_file(path)
        && GgufFile::open(path).is_ok_and(
            |g| matches!(g.meta("general.type"), Some(GValue::String(t)) if t == "adapter"),
        )
}

fn open_peft(dir: &Path, user_scale: f32) -> Result<Adapter> {
    let config = read_json(&dir.join("adapter_config.json"))?.context("no adapter_config.json")?;
    let kind = config["peft_type"].as_str().unwrap_or("LORA");
    if !kind.eq_ignore_ascii_case("lora") {
        bail!("adapter_config.json's peft_type is {kind}: only LORA adapters run");
    }
    let positive = |key: &str| -> Result<f64> {
        match config[key].as_f64() {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => bail!(
                "adapter_config.json's {key} is {}, not a positive number",
                config[key]
            ),
        }
    };
    let rank = positive("r")?;
    let alpha = positive("lora_alpha")?;
    if config["fan_in_fan_out"] == true {
        bail!("adapter_config.json sets fan_in_fan_out (GPT-2 style Conv1D layers): not supported");
    }
    match config["bias"].as_str().unwrap_or("none") {
        "none" => {}
        other => bail!("adapter_config.json's bias is {other:?}: only \"none\" is supported"),
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if config[key].as_object().is_some_and(|m| !m.is_empty()) {
            bail!("adapter_config.json has a {key} (per-layer ranks or alphas): not supported");
        }
    }
    if config["use_dora"] == true {
        bail!("adapter_config.json sets use_dora: DoRA adapters are not supported");
    }
    // rsLoRA scales by alpha / sqrt(r), plain LoRA by alpha / r.
    let rslora = config["use_rslora"] == true;
    let factor = if rslora {
        alpha / rank.sqrt()
    } else {
        alpha / rank
    };
    let weights = ["adapter_model.safetensors", "adapter_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .with_context(|| format!("{} has no adapter_model.safetensors", dir.display()))?;
    if weights.extension().is_some_and(|e| e == "bin") {
        bail!(
            "{} is a pickled PyTorch file, which owrun does not read: save the adapter with \
             safe_serialization=True",
            weights.display()
        );
    }
    let files = SafetensorsFiles::open(std::slice::from_ref(&weights))?;
    // Per layer: A and B, each (dims, values), as they are met.
    type Matrix = (Vec<usize>, Vec<f32>, Stored);
    let mut found: BTreeMap<String, (Option<Matrix>, Option<Matrix>)> = BTreeMap::new();
    for name in files.names() {
        // base_model.model.<the model's own name>.lora_A.weight (PEFT may add the adapter's
        // name before .weight: lora_A.default.weight).
        let stripped = name.strip_prefix("base_model.model.").unwrap_or(&name);
        let (layer, is_a) = match stripped.split_once(".lora_A.") {
            Some((l, _)) => (l, true),
            None => match stripped.split_once(".lora_B.") {
                Some((l, _)) => (l, false),
                None => bail!(
                    "tensor {name} is not a LoRA matrix (lora_A / lora_B): embedding adapters, \
                     trained modules_to_save and biases are not supported"
                ),
            },
        };
        let t = files
            .load(&name, &Device::Cpu)?
            .with_context(|| format!("tensor {name}"))?;
        let stored = Stored::of_dtype(t.dtype());
        let t = t.to_dtype(DType::F32)?;
        let dims = t.dims().to_vec();
        if dims.len() != 2 {
            bail!("tensor {name} has shape {dims:?}, not a matrix");
        }
        let matrix = (dims, t.flatten_all()?.to_vec1::<f32>()?, stored);
        let entry = found.entry(layer.to_string()).or_default();
        if is_a {
            entry.0 = Some(matrix);
        } else {
            entry.1 = Some(matrix);
        }
    }
    let mut layers = BTreeMap::new();
    for (layer, (a, b)) in found {
        let (Some((a_dims, a, a_stored)), Some((b_dims, b, b_stored))) = (a, b) else {
            bail!("{layer} has only one of lora_A and lora_B");
        };
        let scale = (factor as f32) * user_scale;
        let stored = Stored::of(a_stored, b_stored);
        let pair = pair(&layer, (a, &a_dims), (b, &b_dims), scale, stored)?;
        layers.insert(layer, pair);
    }
    if layers.is_empty() {
        bail!("{} holds no LoRA matrices", weights.display());
    }
    Ok(Adapter {
        source: dir.to_path_buf(),
        base_model: config["base_model_name_or_path"]
            .as_str()
            .map(str::to_string),
        architecture: None,
        license: readme_license(dir),
        alpha: Some(alpha),
        rslora: Some(rslora),
        layers,
    })
}

/// A's and B's shapes agree (rank × in and out × rank).
fn pair(
    layer: &str,
    (a, a_dims): (Vec<f32>, &[usize]),
    (b, b_dims): (Vec<f32>, &[usize]),
    scale: f32,
    stored: Stored,
) -> Result<LoraPair> {
    let (rank, inputs) = (a_dims[0], a_dims[1]);
    let (outputs, b_rank) = (b_dims[0], b_dims[1]);
    if rank == 0 || rank != b_rank {
        bail!("{layer}: lora_A is {a_dims:?} and lora_B {b_dims:?}, whose ranks differ");
    }
    Ok(LoraPair {
        a,
        b,
        rank,
        inputs,
        outputs,
        scale,
        stored,
    })
}

fn readme_license(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("README.md")).ok()?;
    let front = text.strip_prefix("---")?.split("\n---").next()?;
    front.lines().find_map(|l| {
        let v = l.strip_prefix("license:")?.trim().trim_matches(['"', '\'']);
        (!v.is_empty()).then(|| v.to_string())
    })
}

fn open_gguf(path: &Path, user_scale: f32, heads: BaseHeads) -> Result<Adapter> {
    let mut file = GgufFile::open(path)?;
    let text = |k: &str| match file.meta(k) {
        Some(GValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    if text("general.type").as_deref() != Some("adapter") {
        bail!(
            "{} is a model, not an adapter (its general.type is not \"adapter\"): give it as \
             the model, or give a LoRA adapter to --lora",
            path.display()
        );
    }
    if let Some(kind) = text("adapter.type").filter(|k| k != "lora") {
        bail!("its adapter.type is {kind:?}: only LoRA adapters run");
    }
    let architecture = text("general.architecture");
    let alpha = match file.meta("adapter.lora.alpha").and_then(gguf::number) {
        Some(a) if a.is_finite() && a > 0.0 => Some(a),
        Some(a) => bail!("adapter.lora.alpha is {a}, not a positive number"),
        None => None,
    };
    let base_model = text("general.base_model.0.repo_url")
        .or_else(|| text("general.base_model.0.name"))
        .or_else(|| text("adapter.base_model"));
    let license = text("general.license");
    let names = file.tensor_names();
    let mut layers = BTreeMap::new();
    for name in &names {
        let Some(base) = name.strip_suffix(".lora_a") else {
            if !name.ends_with(".lora_b") {
                bail!("tensor {name} is not a LoRA matrix (.lora_a / .lora_b)");
            }
            continue;
        };
        let b_name = format!("{base}.lora_b");
        if !names.contains(&b_name) {
            bail!("{base} has lora_a but no lora_b");
        }
        let hf = gguf::hf_linear_name(base, architecture.as_deref()).with_context(|| {
            format!("tensor {name}: no linear layer owrun adapts is named {base}")
        })?;
        let stored = Stored::of(
            Stored::of_ggml(file.tensor_type(name)),
            Stored::of_ggml(file.tensor_type(&b_name)),
        );
        let (a_dims, a) = file.tensor_f32(name)?;
        let (b_dims, mut b) = file.tensor_f32(&b_name)?;
        if a_dims.len() != 2 || b_dims.len() != 2 {
            bail!("{base}: lora_a is {a_dims:?} and lora_b {b_dims:?}, not matrices");
        }
        // llama.cpp scales by alpha / rank (without alpha: by 1), rsLoRA or not.
        let rank = a_dims[0];
        let factor = alpha.map_or(1.0, |a| a / rank.max(1) as f64) as f32;
        let bare = base
            .strip_suffix(".weight")
            .and_then(|b| b.rsplit('.').next());
        let arch = architecture.as_deref();
        if let Some(h) =
            bare.and_then(|b| gguf::permuted_heads(b, arch, heads.heads, heads.kv_heads))
        {
            let bytes: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
            let rows = gguf::unpermute_rows(&bytes, b_dims[0], h)
                .with_context(|| format!("{b_name}: {} rows in {h} heads", b_dims[0]))?;
            b = rows
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
        }
        layers.insert(
            hf.clone(),
            pair(&hf, (a, &a_dims), (b, &b_dims), factor * user_scale, stored)?,
        );
    }
    if layers.is_empty() {
        bail!("{} holds no LoRA matrices", path.display());
    }
    Ok(Adapter {
        source: path.to_path_buf(),
        base_model,
        architecture,
        license,
        alpha,
        rslora: None,
        layers,
    })
}

/// `--lora PATH[:SCALE]`: the path, and the multiplier after its last colon when that is a
/// number (a path may hold colons of its own).
pub fn parse_spec(spec: &str) -> Result<(PathBuf, f32)> {
    if let Some((path, scale)) = spec.rsplit_once(':') {
        if let Ok(s) = scale.trim().parse::<f32>() {
            if !s.is_finite() {
                bail!("--lora {spec}: the scale must be a finite number");
            }
            if path.is_empty() {
                bail!("--lora {spec}: no path before the scale");
            }
            return Ok((PathBuf::from(path), s));
        }
    }
    if spec.is_empty() {
        bail!("--lora needs a path: a PEFT adapter folder or a GGUF adapter file");
    }
    Ok((PathBuf::from(spec), 1.0))
}

#[cfg(test)]
mod tests {
    use super::parse_spec;
    use std::path::PathBuf;

    #[test]
    fn a_spec_is_a_path_and_an_optional_scale() {
        assert_eq!(parse_spec("a/b").unwrap(), (PathBuf::from("a/b"), 1.0));
        assert_eq!(parse_spec("a/b:0.5").unwrap(), (PathBuf::from("a/b"), 0.5));
        assert_eq!(
            parse_spec("c:/x:y").unwrap(),
            (PathBuf::from("c:/x:y"), 1.0)
        );
        assert_eq!(
            parse_spec("t.gguf:-1").unwrap(),
            (PathBuf::from("t.gguf"), -1.0)
        );
        assert!(parse_spec(":2").is_err());
        assert!(parse_spec("a:inf").is_err());
        assert!(parse_spec("").is_err());
    }
}
