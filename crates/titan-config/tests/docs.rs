//! `docs/configuration.md` carries the generated option reference; this keeps it current.
//! Regenerate with `TITAN_BLESS=1 cargo test -p titan-config --test docs`.

use std::path::Path;

const BEGIN: &str =
    "<!-- BEGIN GENERATED: TITAN_BLESS=1 cargo test -p titan-config --test docs -->";
const END: &str = "<!-- END GENERATED -->";

#[test]
fn configuration_page_lists_every_option() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let page = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (Some(begin), Some(end)) = (page.find(BEGIN), page.find(END)) else {
        panic!("{} lacks the generated-section markers", path.display());
    };
    let current = &page[begin + BEGIN.len()..end];
    let expected = format!("\n{}\n", titan_config::markdown_reference().trim());
    if current == expected {
        return;
    }
    if std::env::var_os("TITAN_BLESS").is_some() {
        let updated = format!("{}{BEGIN}{expected}{}", &page[..begin], &page[end..]);
        std::fs::write(&path, updated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    panic!(
        "{} is stale; run `TITAN_BLESS=1 cargo test -p titan-config --test docs`",
        path.display()
    );
}
