//! The local model store: the standard Hugging Face cache layout, so files fetched by
//! transformers or huggingface-cli are reused by owrun and the other way round.
//!
//! ```text
//! <hub cache>/models--owner--name/
//!     blobs/<etag>                  file contents, named by sha256 (LFS) or git sha1
//!     blobs/<etag>.incomplete       a download in progress (resumed from here)
//!     refs/<revision>               the commit a branch or tag pointed at when pulled
//!     snapshots/<commit>/<file>     symlink to ../../blobs/<etag>
//! <hub cache>/.locks/models--owner--name/<etag>.lock
//! ```
//! A file appears in `snapshots/` only after its blob was downloaded completely and verified,
//! so whatever is there is whole.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo};

use crate::engine::format::gguf::SplitName;
use crate::settings::write_atomic;

/// Small files owrun takes along with the weights when the repo has them.
const META_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    // The model card (license front matter) and the license texts: owrun shows them offline.
    "README.md",
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
    "LICENSE.pdf",
    "USE_POLICY.md",
    "NOTICE",
    "NOTICE.txt",
];
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const SINGLE_WEIGHTS: &str = "model.safetensors";
/// Files without which a folder cannot run.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];

pub struct Store {
    cache: Cache,
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Store {
            cache: Cache::new(root),
        }
    }

    pub fn root(&self) -> &Path {
        self.cache.path()
    }

    pub fn repo(&self, repo_id: &str) -> RepoStore {
        let repo = Repo::model(repo_id.to_string());
        let folder = repo.folder_name();
        RepoStore {
            dir: self.root().join(&folder),
            lock_dir: self.root().join(".locks").join(&folder),
            cache: self.cache.repo(repo),
        }
    }
}

pub struct RepoStore {
    dir: PathBuf,
    lock_dir: PathBuf,
    cache: hf_hub::CacheRepo,
}

/// A model folder on disk: a snapshot of the store or a directory the user named.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    /// The commit, for snapshots of the store.
    pub commit: Option<String>,
}

impl RepoStore {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub fn partial_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn lock_path(&self, etag: &str) -> PathBuf {
        self.lock_dir.join(format!("{etag}.lock"))
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.cache.pointer_path(commit)
    }

    /// The commit `revision` points at locally: `refs/<revision>`, or the revision itself when it
    /// is a commit we hold a snapshot of.
    pub fn local_commit(&self, revision: &str) -> Option<String> {
        if let Ok(c) = std::fs::read_to_string(self.dir.join("refs").join(revision)) {
            let c = c.trim().to_string();
            if !c.is_empty() {
                return Some(c);
            }
        }
        let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
        (is_commit && self.snapshot_dir(revision).is_dir()).then(|| revision.to_string())
    }

    /// The snapshot `revision` points at, if one is on disk (complete or not).
    pub fn snapshot(&self, revision: &str) -> Option<Snapshot> {
        let commit = self.local_commit(revision)?;
        let dir = self.snapshot_dir(&commit);
        dir.is_dir().then_some(Snapshot {
            dir,
            commit: Some(commit),
        })
    }

    /// The snapshot of `revision` if it holds every file of the GGUF quantization `tag`.
    pub fn complete_gguf_snapshot(&self, revision: &str, tag: &str) -> Option<Snapshot> {
        self.snapshot(revision)
            .filter(|s| !gguf_files_in(&s.dir, tag).is_empty())
    }

    /// The snapshot of `revision` if it holds a whole LoRA adapter (see [`adapter_in`]).
    pub fn complete_adapter_snapshot(&self, revision: &str) -> Option<Snapshot> {
        self.snapshot(revision)
            .filter(|s| adapter_in(&s.dir).is_some())
    }

    /// The snapshot of `revision` if every file a model needs is in it.
    pub fn complete_snapshot(&self, revision: &str) -> Option<Snapshot> {
        self.snapshot(revision)
            .filter(|s| missing_files(&s.dir).is_empty())
    }

    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        write_atomic(&self.dir.join("refs").join(revision), commit.as_bytes())
    }

    /// Point `snapshots/<commit>/<file>` at `blobs/<etag>`. Made under a temporary name and
    /// renamed, so two pulls at once cannot trip over each other.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let link = self.snapshot_dir(commit).join(file);
        let parent = link.parent().expect("snapshot file has a parent");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let depth = Path::new(file).components().count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        let tmp = parent.join(format!(
            ".{}.{}.tmp",
            link.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        make_link(&target, &self.blob_path(etag), &tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        std::fs::rename(&tmp, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
        Ok(link)
    }

    /// Bytes the repo takes on disk (blobs, including partial downloads).
    pub fn size_on_disk(&self) -> u64 {
        dir_size(&self.dir.join("blobs"))
    }

    /// Remove every file of the repo from the store; returns the bytes freed.
    pub fn remove(&self) -> Result<u64> {
        let freed = self.size_on_disk();
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        }
        if self.lock_dir.exists() {
            let _ = std::fs::remove_dir_all(&self.lock_dir);
        }
        Ok(freed)
    }

    pub fn exists(&self) -> bool {
        self.dir.exists()
    }
}

#[cfg(unix)]
fn make_link(relative_target: &Path, _blob: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(relative_target, link)
}

/// Windows needs a privilege for symlinks; huggingface_hub falls back to copies there too.
#[cfg(not(unix))]
fn make_link(_relative_target: &Path, blob: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::hard_link(blob, link).or_else(|_| std::fs::copy(blob, link).map(|_| ()))
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Which files of a repo owrun fetches.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePlan {
    /// Config, tokenizer, card and license files, fetched first.
    pub meta: Vec<String>,
    pub weights: Weights,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// Sharded: fetch the index, then the shards it names.
    Index,
    Files(Vec<String>),
}

/// The GGUF files of quantization `tag` (Q4_K_M, Q8_0, ...) among a repo's file names, as
/// `llama-cli -hf` picks them: `.gguf` names holding the tag as a whole word, case-insensitive
/// (Q4_K is not Q4_K_M); every shard of a split file; never a multimodal projector.
pub fn gguf_files_for(names: &[String], tag: &str) -> Vec<String> {
    let tag = tag.to_ascii_lowercase();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut found: Vec<String> = names
        .iter()
        .filter(|n| {
            let lower = n.to_ascii_lowercase();
            let file = lower.rsplit('/').next().unwrap_or(&lower);
            lower.ends_with(".gguf")
                && !file.starts_with("mmproj")
                && lower.match_indices(&tag).any(|(i, _)| {
                    !word(lower[..i].chars().next_back())
                        && !word(lower[i + tag.len()..].chars().next())
                })
        })
        .cloned()
        .collect();
    found.sort();
    // A split file is complete only with all its shards: "-00001-of-00003.gguf".
    if let Some(total) = found.first().and_then(|f| shard_total(f)) {
        if found
            .iter()
            .filter(|f| shard_total(f) == Some(total))
            .count()
            != total
        {
            return Vec::new();
        }
    }
    found
}

/// N of a "...-0000K-of-0000N.gguf" shard name.
fn shard_total(name: &str) -> Option<usize> {
    SplitName::parse(name).map(|s| s.count)
}

/// The files of GGUF quantization `tag` in a model folder (first shard first).
pub fn gguf_files_in(dir: &Path, tag: &str) -> Vec<PathBuf> {
    gguf_files_for(&files_under(dir), tag)
        .into_iter()
        .map(|n| dir.join(n))
        .collect()
}

/// The files below `dir`, by their paths relative to it (`a/b.gguf`).
fn files_under(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.path().is_dir() {
                stack.push((e.path(), format!("{name}/")));
            } else {
                names.push(name);
            }
        }
    }
    names
}

/// What a GGUF repo offers, for an error message: its .gguf file names.
pub fn gguf_names(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".gguf"))
        .cloned()
        .collect()
}

/// Choose the files to fetch from a repo's file list: the small files a model needs, and one
/// copy of the weights in safetensors form (never .bin, .pth, original/ or consolidated copies).
pub fn plan_files(repo: &str, names: &[String], gguf: Option<&str>) -> Result<FilePlan> {
    let has = |n: &str| names.iter().any(|x| x == n);
    if let Some(tag) = gguf {
        let files = gguf_files_for(names, tag);
        if files.is_empty() {
            let offered = gguf_names(names);
            bail!(
                "{repo} has no complete {tag} GGUF file; it has: {}",
                if offered.is_empty() {
                    "no GGUF files at all".to_string()
                } else {
                    offered.join(", ")
                }
            );
        }
        let meta = META_FILES
            .iter()
            .filter(|n| has(n))
            .map(|n| n.to_string())
            .collect();
        return Ok(FilePlan {
            meta,
            weights: Weights::Files(files),
        });
    }
    for req in REQUIRED {
        if !has(req) {
            bail!("{repo} has no {req}: owrun needs config.json, tokenizer.json and safetensors weights");
        }
    }
    let meta = META_FILES
        .iter()
        .filter(|n| has(n))
        .map(|n| n.to_string())
        .collect();
    let weights = if has(WEIGHTS_INDEX) {
        Weights::Index
    } else if has(SINGLE_WEIGHTS) {
        Weights::Files(vec![SINGLE_WEIGHTS.to_string()])
    } else {
        let others: Vec<String> = names
            .iter()
            .filter(|n| !n.contains('/') && n.ends_with(".safetensors"))
            .filter(|n| !n.starts_with("consolidated"))
            .cloned()
            .collect();
        if others.is_empty() {
            bail!(
                "{repo} has no safetensors weights at its top level (owrun does not load .bin, \
                 .pth or GGUF files)"
            );
        }
        Weights::Files(others)
    };
    Ok(FilePlan { meta, weights })
}

/// The files of a PEFT adapter.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The model card and license files among [`META_FILES`]: what an adapter repo gives beside
/// its weights.
fn card_files() -> &'static [&'static str] {
    let first = META_FILES
        .iter()
        .position(|f| *f == "README.md")
        .expect("README.md is a meta file");
    &META_FILES[first..]
}

/// Choose the files to fetch from a LoRA adapter's repo: a PEFT adapter (adapter_config.json
/// and adapter_model.safetensors), else its one GGUF file; with the model card and licenses.
pub fn plan_adapter_files(repo: &str, names: &[String]) -> Result<FilePlan> {
    let has = |n: &str| names.iter().any(|x| x == n);
    let mut meta: Vec<String> = Vec::new();
    let weights = if has(ADAPTER_CONFIG) {
        if !has(ADAPTER_WEIGHTS) {
            bail!(
                "{repo} has adapter_config.json but no {ADAPTER_WEIGHTS}{}",
                if has("adapter_model.bin") {
                    " (only a pickled adapter_model.bin, which owrun does not read)"
                } else {
                    ""
                }
            );
        }
        meta.push(ADAPTER_CONFIG.to_string());
        vec![ADAPTER_WEIGHTS.to_string()]
    } else {
        let ggufs = gguf_names(names);
        match ggufs.as_slice() {
            [one] => vec![one.clone()],
            [] => bail!(
                "{repo} is not a LoRA adapter: it has neither adapter_config.json (a PEFT \
                 adapter) nor a GGUF adapter file"
            ),
            several => bail!(
                "{repo} holds {} GGUF files ({}): owrun takes a GGUF adapter from a repo that \
                 holds one; download the one you want and give its path to --lora",
                several.len(),
                several.join(", ")
            ),
        }
    };
    meta.extend(
        card_files()
            .iter()
            .filter(|n| has(n))
            .map(|n| n.to_string()),
    );
    Ok(FilePlan {
        meta,
        weights: Weights::Files(weights),
    })
}

/// The LoRA adapter a snapshot holds, as `--lora` takes it: the folder when it has
/// adapter_config.json and adapter_model.safetensors, else its one GGUF file when that is an
/// adapter (its general.type says so).
pub fn adapter_in(dir: &Path) -> Option<PathBuf> {
    if dir.join(ADAPTER_CONFIG).is_file() {
        return dir
            .join(ADAPTER_WEIGHTS)
            .is_file()
            .then(|| dir.to_path_buf());
    }
    match gguf_names(&files_under(dir)).as_slice() {
        [one] => Some(dir.join(one)).filter(|p| crate::engine::format::lora::is_adapter(p)),
        _ => None,
    }
}

/// The shard files a `model.safetensors.index.json` names, sorted and without duplicates.
pub fn shards_in_index(index_json: &str, origin: &Path) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(index_json)
        .with_context(|| format!("{} is not valid JSON", origin.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map", origin.display()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    for f in &files {
        if f.contains("..") || f.starts_with('/') || f.is_empty() {
            bail!("{} names an unsafe shard path {f:?}", origin.display());
        }
    }
    Ok(files)
}

/// What a model folder lacks to run: config, tokenizer, weights (every shard its index names).
pub fn missing_files(dir: &Path) -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|f| !dir.join(f).exists())
        .map(|f| f.to_string())
        .collect();
    let index = dir.join(WEIGHTS_INDEX);
    if index.exists() {
        match std::fs::read_to_string(&index)
            .map_err(anyhow::Error::from)
            .and_then(|t| shards_in_index(&t, &index))
        {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| !dir.join(s).exists())),
            Err(_) => missing.push(WEIGHTS_INDEX.to_string()),
        }
    } else if !weight_files(dir).iter().any(|p| p.exists()) {
        missing.push(SINGLE_WEIGHTS.to_string());
    }
    missing
}

/// The safetensors files of a complete model folder, in load order.
pub fn weight_files(dir: &Path) -> Vec<PathBuf> {
    let index = dir.join(WEIGHTS_INDEX);
    if let Ok(text) = std::fs::read_to_string(&index) {
        if let Ok(shards) = shards_in_index(&text, &index) {
            return shards.into_iter().map(|s| dir.join(s)).collect();
        }
    }
    if dir.join(SINGLE_WEIGHTS).exists() {
        return vec![dir.join(SINGLE_WEIGHTS)];
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("consolidated"))
        })
        .collect();
    files.sort();
    files
}

/// Human byte count: 1.2 GB, 340 MB, 12 KB.
pub fn format_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plan_prefers_index_and_skips_duplicates() {
        let files = names(&[
            "config.json",
            "tokenizer.json",
            "README.md",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "consolidated.safetensors",
            "pytorch_model.bin",
            "original/consolidated.00.pth",
        ]);
        let plan = plan_files("a/b", &files, None).unwrap();
        assert_eq!(plan.weights, Weights::Index);
        assert_eq!(
            plan.meta,
            names(&["config.json", "tokenizer.json", "README.md"])
        );

        let plan = plan_files(
            "a/b",
            &names(&[
                "config.json",
                "tokenizer.json",
                "consolidated.safetensors",
                "w.safetensors",
            ]),
            None,
        )
        .unwrap();
        assert_eq!(plan.weights, Weights::Files(names(&["w.safetensors"])));
    }

    #[test]
    fn gguf_files_are_picked_by_quantization_tag() {
        let repo = names(&[
            "README.md",
            "Llama-3-8B-Q4_K_M.gguf",
            "Llama-3-8B-Q4_K_S.gguf",
            "Llama-3-8B-Q4_K.gguf",
            "mmproj-Q4_K_M.gguf",
            "Q8_0/Llama-3-8B-Q8_0-00002-of-00002.gguf",
            "Q8_0/Llama-3-8B-Q8_0-00001-of-00002.gguf",
            "Llama-3-8B-Q6_K-00001-of-00002.gguf",
        ]);
        assert_eq!(
            gguf_files_for(&repo, "q4_k_m"),
            names(&["Llama-3-8B-Q4_K_M.gguf"])
        );
        assert_eq!(
            gguf_files_for(&repo, "Q4_K"),
            names(&["Llama-3-8B-Q4_K.gguf"])
        );
        assert_eq!(
            gguf_files_for(&repo, "Q8_0"),
            names(&[
                "Q8_0/Llama-3-8B-Q8_0-00001-of-00002.gguf",
                "Q8_0/Llama-3-8B-Q8_0-00002-of-00002.gguf"
            ])
        );
        // A split file missing a shard is not offered.
        assert!(gguf_files_for(&repo, "Q6_K").is_empty());
        let plan = plan_files("a/b", &repo, Some("Q4_K_M")).unwrap();
        assert_eq!(plan.meta, names(&["README.md"]));
        let err = plan_files("a/b", &repo, Some("Q3_K_L"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no complete Q3_K_L") && err.contains("Llama-3-8B-Q4_K_M.gguf"),
            "{err}"
        );
    }

    #[test]
    fn adapter_repos_give_their_adapter_and_card_only() {
        let plan = plan_adapter_files(
            "a/b",
            &names(&[
                "README.md",
                "adapter_config.json",
                "adapter_model.safetensors",
                "training_args.bin",
                "optimizer.pt",
                "LICENSE",
            ]),
        )
        .unwrap();
        assert_eq!(
            plan.meta,
            names(&["adapter_config.json", "README.md", "LICENSE"])
        );
        assert_eq!(
            plan.weights,
            Weights::Files(names(&["adapter_model.safetensors"]))
        );
        let plan = plan_adapter_files("a/b", &names(&["README.md", "x-lora-f16.gguf"])).unwrap();
        assert_eq!(plan.weights, Weights::Files(names(&["x-lora-f16.gguf"])));
        for (files, needle) in [
            (&["adapter_config.json", "adapter_model.bin"][..], "pickled"),
            (
                &["a.gguf", "b.gguf"][..],
                "holds 2 GGUF files (a.gguf, b.gguf)",
            ),
            (
                &["config.json", "model.safetensors"][..],
                "not a LoRA adapter",
            ),
        ] {
            let err = plan_adapter_files("a/b", &names(files))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn plan_refuses_repos_without_safetensors_or_tokenizer() {
        let err = plan_files(
            "a/b",
            &names(&["config.json", "tokenizer.json", "pytorch_model.bin"]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no safetensors"), "{err}");
        let err = plan_files("a/b", &names(&["config.json", "model.safetensors"]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn missing_files_follows_the_index() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("config.json"), "{}").unwrap();
        std::fs::write(p.join("tokenizer.json"), "{}").unwrap();
        assert_eq!(missing_files(p), names(&["model.safetensors"]));
        std::fs::write(
            p.join(WEIGHTS_INDEX),
            r#"{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(p.join("s1.safetensors"), "x").unwrap();
        assert_eq!(missing_files(p), names(&["s2.safetensors"]));
        std::fs::write(p.join("s2.safetensors"), "x").unwrap();
        assert!(missing_files(p).is_empty());
        assert_eq!(weight_files(p).len(), 2);
    }

    #[test]
    fn unsafe_shard_paths_are_refused() {
        let err = shards_in_index(r#"{"weight_map":{"a":"../../etc/passwd"}}"#, Path::new("i"));
        assert!(err.is_err());
    }

    #[test]
    fn byte_formatting() {
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(1_176_152), "1.2 MB");
        assert_eq!(format_bytes(16_060_000_000), "16.1 GB");
    }
}
