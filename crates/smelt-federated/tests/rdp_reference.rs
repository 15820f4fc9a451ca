//! smelt's Rényi-DP accountant against Google's `dp-accounting` (RdpAccountant with a
//! Poisson-sampled Gaussian), recorded by `fixtures/make_rdp.py` into `fixtures/rdp_reference.json`.

use smelt_federated::privacy::epsilon;

#[test]
fn epsilons_match_dp_accounting() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rdp_reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let f = |k: &str| c[k].as_f64().unwrap();
        let (eps, order) = epsilon(f("q"), f("sigma"), c["steps"].as_u64().unwrap(), f("delta"));
        let want = f("epsilon");
        assert!((eps - want).abs() <= 1e-6 * want.max(1.0), "{c}: smelt {eps} at order {order}");
        assert_eq!(order as u64, c["order"].as_u64().unwrap(), "{c}");
    }
}
