//! The report in a real browser: headless Chromium (Debian's `chromium`) parses the page into the same charts we
//! wrote, and its screenshot shows them (not a blank page).
//!
//! Chromium is required: without it these tests fail and say how to install it (`apt-get install -y chromium`;
//! `scripts/test.sh` installs it). Set `IDEATOR_CHROMIUM` to use another Chromium or Chrome binary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ideator_diagnostics::report::{load_run_folder, render_html};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report-run")
}

/// The browser binary: `IDEATOR_CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> PathBuf {
    let install = "Install it with `apt-get install -y chromium` (Debian/Ubuntu; scripts/test.sh does this), or \
                   point IDEATOR_CHROMIUM at a Chromium or Chrome binary.";
    if let Some(path) = std::env::var_os("IDEATOR_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "IDEATOR_CHROMIUM={} is not a file. {install}", path.display());
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("headless Chromium is needed to test the report and was not found on PATH. {install}");
}

/// What Chromium printed.
struct Output {
    stdout: Vec<u8>,
}

/// Runs headless Chromium on a local file with the flags this sandbox needs and a fresh profile; gives up after
/// two minutes (a hung browser must not hang the test suite). Its output goes to files, not pipes: a page's DOM
/// is larger than a pipe's buffer, and an unread full pipe would block the browser.
fn run_chromium(extra: &[&str], page: &Path) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (profile.path().join("stdout"), profile.path().join("stderr"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::from(File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(File::create(&stderr_path).unwrap()))
        .spawn()
        .expect("start chromium");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().ok();
            panic!("chromium did not finish within two minutes on {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}): {stderr}");
    Output { stdout: std::fs::read(&stdout_path).unwrap() }
}

fn write_fixture_report(dir: &Path) -> (PathBuf, String) {
    let html = render_html(&load_run_folder(&fixture_dir()).unwrap()).unwrap();
    let page = dir.join("report.html");
    std::fs::write(&page, &html).unwrap();
    (page, html)
}

#[test]
fn chromium_parses_every_chart_we_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let (page, html) = write_fixture_report(tmp.path());
    let dom = String::from_utf8(run_chromium(&["--dump-dom"], &page).stdout).unwrap();
    // The browser's DOM holds as many charts, lines, bars and alarm markers as the page we wrote: no element was
    // swallowed by malformed markup.
    for needle in ["<svg", "<figure class=\"chart\"", "class=\"series\"", "class=\"bar\"", "class=\"alarm-marker\""] {
        let (ours, browsers) = (html.matches(needle).count(), dom.matches(needle).count());
        assert!(ours > 0, "the page has no {needle}");
        assert_eq!(browsers, ours, "{needle}: {ours} written, {browsers} in Chromium's DOM");
    }
    assert!(dom.contains("data-chart=\"maxk-rl\"") && dom.contains("Top ideas"));
}

/// Share of pixels that differ from the page background and the white of the panels, and the number of distinct
/// colours (quantised to 4 bits per channel) among them.
fn ink(png_path: &Path) -> (f64, usize, Vec<[u8; 3]>) {
    let mut decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_path).unwrap()));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = info.color_type.samples();
    assert!(channels >= 3, "expected an RGB screenshot, got {:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()].chunks_exact(channels).map(|p| [p[0], p[1], p[2]]).collect();
    let background = [[0xff, 0xff, 0xff], [0xf6, 0xf8, 0xfa]];
    let inked: Vec<[u8; 3]> = pixels.iter().copied().filter(|p| !background.contains(p)).collect();
    let mut colours: Vec<[u8; 3]> = inked.iter().map(|p| [p[0] >> 4, p[1] >> 4, p[2] >> 4]).collect();
    colours.sort_unstable();
    colours.dedup();
    (inked.len() as f64 / pixels.len() as f64, colours.len(), inked)
}

fn has_colour(pixels: &[[u8; 3]], want: [u8; 3]) -> bool {
    pixels.iter().any(|p| p.iter().zip(want).all(|(a, b)| a.abs_diff(b) <= 6))
}

#[test]
fn the_screenshot_shows_the_charts() {
    let tmp = tempfile::tempdir().unwrap();
    let (page, _) = write_fixture_report(tmp.path());
    let shot = tmp.path().join("report.png");
    run_chromium(&["--window-size=1000,2600", &format!("--screenshot={}", shot.display())], &page);
    let (share, colours, inked) = ink(&shot);
    eprintln!("report screenshot: {:.1}% of pixels inked, {colours} distinct colours", 100.0 * share);

    // The check can fail: a page with nothing on it has no ink.
    let blank = tmp.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body style=\"background:#f6f8fa\"></body></html>").unwrap();
    let blank_shot = tmp.path().join("blank.png");
    run_chromium(&["--window-size=1000,2600", &format!("--screenshot={}", blank_shot.display())], &blank);
    let (blank_share, blank_colours, _) = ink(&blank_shot);
    assert!(blank_share < 0.001 && blank_colours <= 1, "blank page: {blank_share} ink, {blank_colours} colours");

    // The first 2600 px hold the cards, the reward chart, the max@k charts and the first diversity charts: lines,
    // shaded bands, text and gridlines cover several percent of the page in many colours.
    assert!(share > 0.03, "only {:.2}% of the screenshot is not background", 100.0 * share);
    assert!(colours >= 40, "only {colours} distinct colours");
    // The RL series colour and the alarm red are drawn.
    assert!(has_colour(&inked, [0x4e, 0x79, 0xa7]), "no RL-blue pixels");
    assert!(has_colour(&inked, [0xd6, 0x27, 0x28]), "no alarm-red pixels");
}
