//! The committed message types and client stub (`src/proto/flwr.proto.rs`) are what
//! tonic-prost-build generates from `proto/flower_transport.proto` today.
//!
//! Needs `protoc` (Debian `protobuf-compiler`, or `PROTOC=`). Without it the test says so and
//! passes, unless `SMELT_REQUIRE_PROTOC=1` (CI sets it). `SMELT_REGENERATE=1` rewrites the
//! committed file instead of comparing (`scripts/gen-proto`).

use std::path::{Path, PathBuf};

fn protoc_found() -> bool {
    let exe = std::env::var_os("PROTOC").map(PathBuf::from).unwrap_or_else(|| "protoc".into());
    std::process::Command::new(exe).arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn committed_code_is_what_the_proto_generates() {
    if !protoc_found() {
        assert!(std::env::var("SMELT_REQUIRE_PROTOC").as_deref() != Ok("1"), "SMELT_REQUIRE_PROTOC=1 but protoc was not found");
        eprintln!("protoc not found: the generated code was not checked against the .proto");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("smelt-proto-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&out)
        .compile_protos(&[root.join("proto/flower_transport.proto")], &[root.join("proto")])
        .unwrap();
    let fresh = std::fs::read_to_string(out.join("flwr.proto.rs")).unwrap();
    let committed_path = root.join("src/proto/flwr.proto.rs");
    if std::env::var("SMELT_REGENERATE").as_deref() == Ok("1") {
        std::fs::write(&committed_path, &fresh).unwrap();
    } else {
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        assert!(committed == fresh, "{} is stale: run scripts/gen-proto", committed_path.display());
    }
    std::fs::remove_dir_all(&out).ok();
}
