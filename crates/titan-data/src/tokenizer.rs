//! Hugging Face tokenizer with torchtitan's BOS/EOS rules (`components/tokenizer.py`).
//!
//! torchtitan reads `tokenizer_config.json`, adds every special token it names (the top-level
//! `bos_token`, `eos_token`, ... keys, then `added_tokens_decoder`) to the tokenizer, and only
//! then looks the BOS/EOS strings up. Tokens missing from the vocabulary therefore get fresh
//! ids after it: torchtitan's test tokenizer (2002 entries) ends up with BOS 2002 and EOS 2003.
//! We replay the same steps so ids match torchtitan's exactly.

use std::path::Path;

use serde_json::Value;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

/// A loaded tokenizer plus the BOS/EOS ids the data pipeline inserts around each document.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    /// The tokenizer's own post-processor already inserts BOS/EOS (e.g. Llama 3's template).
    hf_adds_bos: bool,
    hf_adds_eos: bool,
    origin: String,
}

/// Keys torchtitan reads from `tokenizer_config.json`, in its order (the order decides the ids
/// of tokens that are not yet in the vocabulary).
const STANDARD_SPECIAL_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
];

impl Tokenizer {
    /// Loads `dir/tokenizer.json` (or `vocab.json` + `merges.txt`) and, when present,
    /// `dir/tokenizer_config.json` for the special tokens.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Tokenizer {
                origin: dir.display().to_string(),
                message: "is not a directory; point the tokenizer path at the folder holding \
                          tokenizer.json and tokenizer_config.json"
                    .into(),
            });
        }
        let origin = dir.display().to_string();
        let inner = load_model(dir)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            let bytes =
                std::fs::read(&config_path).map_err(|e| Error::io(&config_path, "read", e))?;
            Some(parse_config(&bytes, &config_path.display().to_string())?)
        } else {
            None
        };
        Self::assemble(inner, config.as_ref(), origin)
    }

    /// Builds a tokenizer from in-memory `tokenizer.json` and optional `tokenizer_config.json`
    /// bytes; `origin` names them in error messages.
    pub fn from_bytes(
        tokenizer_json: &[u8],
        config_json: Option<&[u8]>,
        origin: &str,
    ) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| Error::Tokenizer {
                origin: origin.to_string(),
                message: format!(
                    "tokenizer.json does not parse ({e}); is it a Hugging Face tokenizer.json?"
                ),
            })?;
        let config = config_json
            .map(|bytes| parse_config(bytes, origin))
            .transpose()?;
        Self::assemble(inner, config.as_ref(), origin.to_string())
    }

    /// Uses these BOS/EOS ids instead of the ones named by `tokenizer_config.json`.
    pub fn with_bos_eos(mut self, bos_id: u32, eos_id: u32) -> Result<Self> {
        let vocab_size = self.vocab_size();
        for (which, id) in [("BOS", bos_id), ("EOS", eos_id)] {
            if id as usize >= vocab_size {
                return Err(Error::Tokenizer {
                    origin: self.origin.clone(),
                    message: format!("{which} id {id} is outside the vocabulary (size {vocab_size}); pass an id below {vocab_size}"),
                });
            }
        }
        self.bos_id = Some(bos_id);
        self.eos_id = Some(eos_id);
        self.detect_hf_added_specials()?;
        Ok(self)
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        config: Option<&Value>,
        origin: String,
    ) -> Result<Self> {
        let mut tokenizer = Tokenizer {
            inner,
            bos_id: None,
            eos_id: None,
            hf_adds_bos: false,
            hf_adds_eos: false,
            origin,
        };
        if let Some(config) = config {
            tokenizer.add_configured_special_tokens(config)?;
        }
        tokenizer.detect_hf_added_specials()?;
        Ok(tokenizer)
    }

    fn add_configured_special_tokens(&mut self, config: &Value) -> Result<()> {
        let bos_token = self.config_token(config, "bos_token")?;
        let eos_token = self.config_token(config, "eos_token")?;
        let mut to_add = Vec::new();
        for key in STANDARD_SPECIAL_KEYS {
            let Some(entry) = config.get(key).filter(|v| !v.is_null()) else {
                continue;
            };
            let Some(content) = self.config_token(config, key)? else {
                continue;
            };
            to_add.push(added_token(&content, entry));
        }
        if let Some(Value::Object(decoder)) = config.get("added_tokens_decoder") {
            for entry in decoder.values() {
                if let Some(content) = entry.get("content").and_then(Value::as_str) {
                    to_add.push(added_token(content, entry));
                }
            }
        }
        if !to_add.is_empty() {
            self.inner.add_special_tokens(&to_add);
        }
        self.bos_id = bos_token.as_deref().and_then(|t| self.inner.token_to_id(t));
        // torchtitan matches EOS only when the string differs from BOS (an `elif`).
        self.eos_id = eos_token
            .filter(|eos| Some(eos) != bos_token.as_ref())
            .and_then(|t| self.inner.token_to_id(&t));
        Ok(())
    }

    /// A special token given as `"<s>"` or `{"content": "<s>", ...}`.
    fn config_token(&self, config: &Value, key: &str) -> Result<Option<String>> {
        match config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(map)) => match map.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(Error::Tokenizer {
                    origin: self.origin.clone(),
                    message: format!("tokenizer_config.json key '{key}' is an object without a string 'content'; give the token as a string"),
                }),
            },
            Some(other) => Err(Error::Tokenizer {
                origin: self.origin.clone(),
                message: format!("tokenizer_config.json key '{key}' is {other}, expected a string or {{\"content\": ...}}"),
            }),
        }
    }

    /// torchtitan encodes "" to see whether the tokenizer's post-processor adds BOS/EOS itself,
    /// and then does not add them a second time.
    fn detect_hf_added_specials(&mut self) -> Result<()> {
        let empty = self
            .inner
            .encode_fast("", true)
            .map_err(|e| self.encode_error(e))?;
        let ids = empty.get_ids();
        self.hf_adds_bos = self.bos_id.is_some_and(|b| ids.contains(&b));
        self.hf_adds_eos = self.eos_id.is_some_and(|e| ids.contains(&e));
        Ok(())
    }

    fn encode_error(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer {
            origin: self.origin.clone(),
            message: format!("encoding failed: {e}"),
        }
    }

    /// torchtitan's `encode(text, add_bos, add_eos)`: the tokenizer's own encoding, with BOS
    /// prepended / EOS appended when asked for and not already added by the tokenizer.
    pub fn encode(&self, text: &str, add_bos: bool, add_eos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.encode_into(text, add_bos, add_eos, &mut ids)?;
        Ok(ids)
    }

    /// Like [`Tokenizer::encode`] but appends to `out` (the packer's token buffer).
    pub fn encode_into(
        &self,
        text: &str,
        add_bos: bool,
        add_eos: bool,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let encoding = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| self.encode_error(e))?;
        if add_bos && !self.hf_adds_bos {
            out.push(self.require_bos()?);
        }
        out.extend_from_slice(encoding.get_ids());
        if add_eos && !self.hf_adds_eos {
            out.push(self.require_eos()?);
        }
        Ok(())
    }

    /// Text for `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer {
                origin: self.origin.clone(),
                message: format!("decoding failed: {e}"),
            })
    }

    /// Number of ids, added tokens included (torchtitan's `get_vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// BOS id, if the config named one (or [`Tokenizer::with_bos_eos`] set it).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// EOS id, if the config named one (or [`Tokenizer::with_bos_eos`] set it).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// BOS id, or an error saying how to provide one.
    pub fn require_bos(&self) -> Result<u32> {
        self.bos_id
            .ok_or_else(|| self.missing_special("BOS", "bos_token"))
    }

    /// EOS id, or an error saying how to provide one.
    pub fn require_eos(&self) -> Result<u32> {
        self.eos_id
            .ok_or_else(|| self.missing_special("EOS", "eos_token"))
    }

    fn missing_special(&self, which: &'static str, key: &str) -> Error {
        Error::MissingSpecialToken {
            origin: self.origin.clone(),
            which,
            hint: format!("add \"{key}\" to tokenizer_config.json or call Tokenizer::with_bos_eos"),
        }
    }

    /// Id of a token string, added tokens included.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Where this tokenizer was loaded from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Errors if any id is `>= vocab_size` (an embedding lookup out of range), naming both numbers.
pub fn check_vocab(ids: &[u32], vocab_size: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(&id) => Err(Error::TokenOutOfVocab {
            id,
            vocab_size,
            context: String::new(),
        }),
        None => Ok(()),
    }
}

fn parse_config(bytes: &[u8], origin: &str) -> Result<Value> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::Tokenizer {
        origin: origin.to_string(),
        message: format!("tokenizer_config.json is not valid JSON ({e}); fix or delete it"),
    })?;
    if !value.is_object() {
        return Err(Error::Tokenizer {
            origin: origin.to_string(),
            message: "tokenizer_config.json must hold a JSON object".into(),
        });
    }
    Ok(value)
}

/// torchtitan's `_process_special_token`: flags come from the config entry when it is an object
/// (`normalized` then defaults to true, as in its code), else a plain special token.
fn added_token(content: &str, entry: &Value) -> AddedToken {
    let flag =
        |key: &str, default: bool| entry.get(key).and_then(Value::as_bool).unwrap_or(default);
    if entry.is_object() {
        AddedToken::from(content.to_string(), flag("special", true))
            .single_word(flag("single_word", false))
            .lstrip(flag("lstrip", false))
            .rstrip(flag("rstrip", false))
            .normalized(flag("normalized", true))
    } else {
        AddedToken::from(content.to_string(), true)
    }
}

/// torchtitan's loading order: `tokenizer.json`, else `vocab.json` + `merges.txt` as a GPT-2
/// style byte-level BPE.
fn load_model(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let origin = dir.display().to_string();
    let json_path = dir.join("tokenizer.json");
    if json_path.exists() {
        let bytes = std::fs::read(&json_path).map_err(|e| Error::io(&json_path, "read", e))?;
        return tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            origin,
            message: format!(
                "tokenizer.json does not parse ({e}); is it a Hugging Face tokenizer.json?"
            ),
        });
    }
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    if vocab.exists() && merges.exists() {
        return byte_level_bpe(&vocab, &merges)
            .map_err(|message| Error::Tokenizer { origin, message });
    }
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, "list", e))?
        .filter_map(|entry| {
            entry
                .ok()
                .map(|e| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    found.sort();
    Err(Error::Tokenizer {
        origin,
        message: format!(
            "no tokenizer.json (or vocab.json + merges.txt) here; files present: [{}]",
            found.join(", ")
        ),
    })
}

fn byte_level_bpe(
    vocab: &Path,
    merges: &Path,
) -> std::result::Result<tokenizers::Tokenizer, String> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let (vocab, merges) = (vocab.display().to_string(), merges.display().to_string());
    let bpe = BPE::from_file(&vocab, &merges)
        .build()
        .map_err(|e| format!("{vocab} + {merges} do not load as a BPE model ({e})"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.with_post_processor(Some(ByteLevel::new(true, true, true)));
    Ok(tokenizer)
}
