//! `smelt imatrix MODEL --calib TEXT -o FILE`: the calibration run and the importance matrix
//! from `smelt-compress`, the file written atomically in llama.cpp's GGUF or legacy form.

use std::time::Instant;

use anyhow::{Context, Result};
use smelt_compress::calib::{decoder_imatrix, run_decoder, CalibOptions, Collector};
use smelt_models::LoadOptions;

use crate::cli::{Global, ImatrixArgs, ImatrixFormat};
use crate::progress::Progress;

pub fn run(args: &ImatrixArgs, global: &Global) -> Result<()> {
    smelt_formats::fsutil::check_output(&args.output).with_context(|| format!("cannot write {}", args.output.display()))?;
    let format = args.output_format.unwrap_or(if args.output.extension().is_some_and(|e| e == "dat") { ImatrixFormat::Dat } else { ImatrixFormat::Gguf });
    let text = super::read_utf8(&args.calib)?;
    let path = crate::resolve_model(&args.model, global.quiet)?;
    let m = smelt_models::load(&path, LoadOptions::default()).with_context(|| format!("loading {}", path.display()))?;
    let pool = global.pool();
    let opts = CalibOptions { ctx: args.ctx, max_chunks: args.chunks, process_output: args.process_output };
    let start = Instant::now();
    let mut collector = Collector::new(&pool);
    let mut bar: Option<Progress> = None;
    let chunks = run_decoder(&m.model, &m.tok, &pool, &text, opts, &mut collector, &mut |done, total| {
        let b = bar.get_or_insert_with(|| Progress::new("imatrix", total as u64, false, global.quiet));
        b.inc(1, &format!("chunk {done}/{total}"));
    })
    .with_context(|| format!("calibrating on {}", args.calib.display()))?;
    if let Some(b) = bar {
        b.finish();
    }
    let stats = collector.finish()?;
    let dataset = args.calib.display().to_string();
    let imatrix = decoder_imatrix(&m.model, &stats, &dataset, chunks, opts);
    let body = match format {
        ImatrixFormat::Gguf => imatrix.to_gguf_bytes()?,
        ImatrixFormat::Dat => imatrix.to_dat_bytes(),
    };
    smelt_formats::fsutil::write_atomic_io(&args.output, |w| std::io::Write::write_all(w, &body)).with_context(|| format!("writing {}", args.output.display()))?;
    if !global.quiet {
        eprintln!(
            "wrote {} ({} entries, {chunks} chunks of {} tokens, {:.1} s on {} threads)",
            args.output.display(),
            imatrix.entries.len(),
            args.ctx,
            start.elapsed().as_secs_f64(),
            pool.n_threads()
        );
    }
    Ok(())
}
