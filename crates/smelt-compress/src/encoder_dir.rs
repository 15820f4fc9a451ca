//! Writing a sentence-transformers directory (what pruning and distillation of encoders produce):
//! the source's side files (tokenizer, pooling, modules) copied, a new `config.json`, F32 weights
//! in `model.safetensors`; built in a temporary directory beside the output and renamed into
//! place when complete, so a failure leaves nothing half-written.

use std::path::Path;

use crate::CompressError;

fn bad(msg: String) -> CompressError {
    CompressError::Output(msg)
}

/// Refuses an output that exists and is not an empty directory (checked before long work).
pub fn check_new_dir(out: &Path) -> Result<(), CompressError> {
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(bad(format!("{} exists and is not an empty directory: give a new directory", out.display())));
    }
    Ok(())
}

/// Writes `out`: `from`'s side files, `config` as config.json, `safetensors` (the bytes of an F32
/// safetensors file) as model.safetensors.
pub fn write_encoder_dir(from: &Path, config: &serde_json::Value, safetensors: &[u8], out: &Path) -> Result<(), CompressError> {
    let tmp = out.with_file_name(format!(".{}.smelt-tmp", out.file_name().and_then(|n| n.to_str()).unwrap_or("encoder")));
    std::fs::remove_dir_all(&tmp).ok();
    let write = || -> std::io::Result<()> {
        copy_dir(from, &tmp)?;
        std::fs::write(tmp.join("model.safetensors"), safetensors)?;
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(config).map_err(std::io::Error::other)?)?;
        if out.exists() {
            std::fs::remove_dir(out)?;
        }
        std::fs::rename(&tmp, out)
    };
    write().map_err(|e| {
        std::fs::remove_dir_all(&tmp).ok();
        bad(format!("writing {}: {e}", out.display()))
    })
}

/// Copies the regular files of `from` (and of its subdirectories) into `to`, skipping checksum
/// side files and ONNX exports (they describe the original weights).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (path, name) = (e.path(), e.file_name());
        let n = name.to_string_lossy();
        if n.ends_with(".sha256") || n.ends_with(".onnx") || n == "model.safetensors" || n == "onnx" {
            continue;
        }
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_dir(&path, &to.join(&name))?;
        } else if ty.is_file() {
            std::fs::copy(&path, to.join(&name))?;
        }
    }
    Ok(())
}
