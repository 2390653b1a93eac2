use clap::Parser;

/// Predict, validate (mAP quality gate) and serve YOLOv8 detectors. Not implemented yet: see issue 4.
#[derive(Parser, Debug)]
#[command(name = "yolo-infer", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("yolo-infer: no commands yet; run with --help");
    std::process::exit(2);
}
