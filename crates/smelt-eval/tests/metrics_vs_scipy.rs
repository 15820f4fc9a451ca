//! Metric code against values recorded from numpy, scipy and scikit-learn on fixed inputs
//! (tests/reference/metrics.json, made by tests/reference/make_metric_fixtures.py).

use serde_json::Value;
use smelt_eval::stats::{percentile, Running};

fn fixtures() -> Value {
    serde_json::from_str(include_str!("reference/metrics.json")).expect("metrics.json parses")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn percentiles_match_numpy() {
    let f = fixtures();
    let p = &f["percentile"];
    let mut v = floats(&p["values"]);
    v.sort_by(f64::total_cmp);
    for (q, want) in floats(&p["q"]).into_iter().zip(floats(&p["expected"])) {
        let got = percentile(&v, q);
        assert!(close(got, want, 1e-12), "q={q}: {got} vs numpy {want}");
    }
}

#[test]
fn standard_error_matches_scipy_sem() {
    let f = fixtures();
    let mut r = Running::default();
    floats(&f["sem"]["values"]).into_iter().for_each(|x| r.push(x));
    assert!(close(r.mean(), f["sem"]["mean"].as_f64().unwrap(), 1e-12));
    assert!(close(r.stderr(), f["sem"]["sem"].as_f64().unwrap(), 1e-9), "{} vs {}", r.stderr(), f["sem"]["sem"]);
}

#[test]
fn spearman_and_pearson_match_scipy() {
    let f = fixtures();
    let s = &f["spearman"];
    let (x, y) = (floats(&s["x"]), floats(&s["y"]));
    let sp = smelt_models::stats::spearman(&x, &y);
    let pe = smelt_models::stats::pearson(&x, &y);
    assert!(close(sp, s["spearman"].as_f64().unwrap(), 1e-12), "{sp} vs {}", s["spearman"]);
    assert!(close(pe, s["pearson"].as_f64().unwrap(), 1e-12), "{pe} vs {}", s["pearson"]);
}

#[test]
fn classification_metrics_match_sklearn() {
    let f = fixtures();
    let c = &f["classification"];
    let idx = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect::<Vec<_>>();
    let (truth, pred) = (idx(&c["truth"]), idx(&c["pred"]));
    let labels: Vec<String> = (0..c["labels"].as_u64().unwrap()).map(|i| i.to_string()).collect();
    let m = smelt_models::classify::metrics(&truth, &pred, &labels);
    assert!(close(m.accuracy, c["accuracy"].as_f64().unwrap(), 1e-12));
    for (k, cls) in m.classes.iter().enumerate() {
        assert!(close(cls.precision, floats(&c["precision"])[k], 1e-12), "precision of {k}");
        assert!(close(cls.recall, floats(&c["recall"])[k], 1e-12), "recall of {k}");
        assert!(close(cls.f1, floats(&c["f1"])[k], 1e-12), "f1 of {k}");
        assert_eq!(cls.support, idx(&c["support"])[k]);
    }
    assert!(close(m.macro_precision, c["macro_precision"].as_f64().unwrap(), 1e-12));
    assert!(close(m.macro_recall, c["macro_recall"].as_f64().unwrap(), 1e-12));
    assert!(close(m.macro_f1, c["macro_f1"].as_f64().unwrap(), 1e-12));
    let conf: Vec<Vec<usize>> = c["confusion"].as_array().unwrap().iter().map(idx).collect();
    assert_eq!(m.confusion, conf);
    // The fixture really has a class that is never predicted (zero_division=0 matters).
    assert_eq!(floats(&c["precision"])[3], 0.0);
}
