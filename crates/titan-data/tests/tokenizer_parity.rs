//! Token ids must equal torchtitan's. Expected ids were produced by running torchtitan 0.2.2's
//! own `HuggingFaceTokenizer` (torchtitan/components/tokenizer.py from the PyPI wheel, imports of
//! its config/logging stubbed) with Python `tokenizers` 0.23.3 on the same files:
//! `HuggingFaceTokenizer(dir).encode(text, add_bos=True, add_eos=True)`.

mod common;

use common::{torchtitan_tokenizer, BOS, EOS};
use titan_data::{check_vocab, embedded, Error, Tokenizer};

const TORCHTITAN_CASES: &[(&str, &[u32])] = &[
    ("", &[2002, 2003]),
    (
        "Hello, world!",
        &[
            2002, 72, 101, 108, 108, 111, 44, 119, 111, 114, 108, 100, 33, 2003,
        ],
    ),
    (
        "The quick brown fox jumps over the lazy dog.",
        &[
            2002, 84, 104, 101, 113, 117, 105, 99, 107, 98, 114, 111, 119, 110, 102, 111, 120, 106,
            117, 109, 112, 115, 111, 118, 101, 114, 116, 104, 101, 108, 97, 122, 121, 100, 111,
            103, 46, 2003,
        ],
    ),
    (
        "  leading and trailing spaces  ",
        &[
            2002, 108, 101, 97, 100, 105, 110, 103, 97, 110, 100, 116, 114, 97, 105, 108, 105, 110,
            103, 115, 112, 97, 99, 101, 115, 2003,
        ],
    ),
    (
        "line one\nline two\r\n\ttabbed",
        &[
            2002, 108, 105, 110, 101, 111, 110, 101, 108, 105, 110, 101, 116, 119, 111, 116, 97,
            98, 98, 101, 100, 2003,
        ],
    ),
    (
        "caf\u{e9} na\u{ef}ve r\u{e9}sum\u{e9}",
        &[
            2002, 99, 97, 102, 110, 97, 118, 101, 114, 115, 117, 109, 2003,
        ],
    ),
    (
        "emoji \u{1f680} and CJK \u{4e2d}\u{6587}",
        &[
            2002, 101, 109, 111, 106, 105, 97, 110, 100, 67, 74, 75, 2003,
        ],
    ),
    (
        "digits 0123456789 and symbols ~!@#$%^&*()_+{}|:\"<>?",
        &[
            2002, 100, 105, 103, 105, 116, 115, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 97, 110,
            100, 115, 121, 109, 98, 111, 108, 115, 126, 33, 64, 35, 36, 37, 94, 38, 42, 40, 41, 95,
            43, 123, 125, 124, 58, 34, 60, 62, 63, 2003,
        ],
    ),
    // torchtitan adds the config's special tokens to the tokenizer, so their text is matched.
    (
        "<|begin_of_text|>inside<|end_of_text|>",
        &[2002, 2002, 105, 110, 115, 105, 100, 101, 2003, 2003],
    ),
    (
        "<|image|> <|pad|> tokens",
        &[2002, 1998, 2001, 116, 111, 107, 101, 110, 115, 2003],
    ),
    (
        "Beginners BBQ Class Taking Place in Missoula!",
        &[
            2002, 66, 101, 103, 105, 110, 110, 101, 114, 115, 66, 66, 81, 67, 108, 97, 115, 115,
            84, 97, 107, 105, 110, 103, 80, 108, 97, 99, 101, 105, 110, 77, 105, 115, 115, 111,
            117, 108, 97, 33, 2003,
        ],
    ),
    ("x", &[2002, 120, 2003]),
];

#[test]
fn torchtitan_test_tokenizer_matches_torchtitan() {
    let tokenizer = torchtitan_tokenizer();
    assert_eq!(tokenizer.bos_id(), Some(BOS));
    assert_eq!(tokenizer.eos_id(), Some(EOS));
    // 2002 vocabulary entries + BOS and EOS added from tokenizer_config.json.
    assert_eq!(tokenizer.vocab_size(), 2004);
    for (text, expected) in TORCHTITAN_CASES {
        assert_eq!(
            tokenizer.encode(text, true, true).unwrap(),
            *expected,
            "text {text:?}"
        );
    }
    let plain = tokenizer.encode("Hi there", false, false).unwrap();
    assert_eq!(plain, vec![72, 105, 116, 104, 101, 114, 101]);
}

/// Same oracle, on Titan's embedded SOTU tokenizer (decompressed into a folder).
const SOTU_CASES: &[(&str, &[u32])] = &[
    ("", &[0, 1]),
    (
        "Fellow-Citizens of the Senate and House of Representatives:",
        &[
            0, 5909, 14, 6248, 269, 261, 1530, 285, 1876, 269, 2295, 27, 1,
        ],
    ),
    (
        "The state of our Union is strong.",
        &[0, 5642, 1104, 269, 335, 1139, 329, 1284, 15, 1],
    ),
    (
        "  two  spaces\nand a newline",
        &[
            0, 222, 890, 222, 716, 66, 555, 200, 512, 260, 663, 77, 742, 1,
        ],
    ),
    (
        "caf\u{e9} \u{2014} \u{201c}quoted\u{201d}",
        &[
            0, 68, 66, 71, 129, 104, 222, 160, 224, 244, 222, 160, 224, 252, 402, 528, 278, 160,
            224, 253, 1,
        ],
    ),
    (
        "emoji \u{1f680}!",
        &[0, 438, 80, 75, 74, 222, 174, 255, 250, 224, 2, 1],
    ),
    ("<|end_of_text|> inside", &[0, 1, 933, 703, 1]),
    ("1790 and 2021", &[0, 18, 2736, 17, 285, 2855, 4462, 1]),
];

#[test]
fn embedded_tokenizer_matches_torchtitan_loading_it() {
    let tokenizer = embedded::tokenizer().unwrap();
    assert_eq!(
        (
            tokenizer.bos_id(),
            tokenizer.eos_id(),
            tokenizer.vocab_size()
        ),
        (Some(0), Some(1), 8192)
    );
    for (text, expected) in SOTU_CASES {
        assert_eq!(
            tokenizer.encode(text, true, true).unwrap(),
            *expected,
            "text {text:?} (if the committed tokenizer was retrained on purpose, regenerate these ids)"
        );
    }
    let text = "We the People of the United States, in Order to form a more perfect Union";
    let ids = tokenizer.encode(text, false, false).unwrap();
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), text);
}

#[test]
fn ids_at_or_above_the_model_vocab_are_errors_naming_both_numbers() {
    assert!(check_vocab(&[0, 5, 2047], 2048).is_ok());
    let err = check_vocab(&[0, 2003, 7], 2000).unwrap_err();
    assert!(matches!(
        err,
        Error::TokenOutOfVocab {
            id: 2003,
            vocab_size: 2000,
            ..
        }
    ));
    let message = err.to_string();
    assert!(
        message.contains("2003") && message.contains("2000"),
        "{message}"
    );
}

#[test]
fn explicit_special_ids_and_missing_config() {
    let dir = common::TempDir::new("tok");
    let json = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/torchtitan-tokenizer/tokenizer.json"),
    )
    .unwrap();
    dir.write("tokenizer.json", &json);
    // Without tokenizer_config.json there is no BOS/EOS: encoding with them is an error that
    // says how to fix it.
    let bare = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(bare.vocab_size(), 2002);
    let message = bare.encode("ab", true, true).unwrap_err().to_string();
    assert!(
        message.contains("bos_token") && message.contains("with_bos_eos"),
        "{message}"
    );
    assert_eq!(bare.encode("ab", false, false).unwrap(), vec![97, 98]);
    // Explicit ids.
    let explicit = bare.clone().with_bos_eos(1, 2).unwrap();
    assert_eq!(
        explicit.encode("ab", true, true).unwrap(),
        vec![1, 97, 98, 2]
    );
    let message = bare.with_bos_eos(1, 5000).unwrap_err().to_string();
    assert!(
        message.contains("5000") && message.contains("2002"),
        "{message}"
    );
    // A folder without tokenizer files names what it found.
    let empty = common::TempDir::new("tok-empty");
    empty.write("README", "x");
    let message = Tokenizer::from_dir(empty.path()).unwrap_err().to_string();
    assert!(
        message.contains("tokenizer.json") && message.contains("README"),
        "{message}"
    );
}
