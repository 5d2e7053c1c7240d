//! The Helm chart's embedded broker config must be one the broker accepts.

use taskbroker::config::Config;

#[test]
fn the_charts_default_config_parses_and_validates() {
    let values = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/helm/taskbroker/values.yaml"))
        .expect("helm/taskbroker/values.yaml");
    let mut lines = values.lines().skip_while(|l| !l.starts_with("config: |"));
    lines.next().expect("a `config: |` block in values.yaml");
    let block: Vec<&str> =
        lines.take_while(|l| l.starts_with("  ") || l.is_empty()).map(|l| l.get(2..).unwrap_or("")).collect();
    let config = Config::from_toml(&block.join("\n")).expect("the chart's config parses");
    config.validate().expect("the chart's config is valid");
}
