//! `ideator report` end to end: the fixture run folder in, one HTML file out, a JSON summary on stdout, and a
//! readable error for a folder that is not a run.

mod common;
use common::ideator;

use std::path::Path;

fn fixture() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/diagnostics/tests/fixtures/report-run"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn writes_the_report_into_the_run_folder_or_where_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    copy_dir(fixture(), &run);

    let out = ideator().arg("report").arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let default = run.join("report.html");
    assert!(stdout.contains(&default.display().to_string()) && stdout.contains("8 steps"), "{stdout}");
    let html = std::fs::read_to_string(&default).unwrap();
    assert!(html.contains("data-chart=\"reward\"") && html.contains("</html>"));

    let elsewhere = tmp.path().join("r.html");
    let out = ideator().args(["report", "--json", "--out"]).arg(&elsewhere).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["report"], elsewhere.display().to_string());
    assert_eq!(summary["series"][0]["kind"], "rl");
    assert_eq!(summary["series"][0]["points"], 8);
    assert_eq!(summary["series"][0]["executions"], 64);
    assert!(summary["alarms"].as_u64().unwrap() > 0);
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), html, "the same run gives the same page");
}

#[test]
fn a_folder_that_is_not_a_run_is_an_error_that_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ideator().arg("report").arg(tmp.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("neither metrics.jsonl nor ideas.jsonl"), "{stderr}");
}
