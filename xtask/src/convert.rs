//! `cargo xtask convert`: Titan checkpoint <-> Hugging Face folder.

use std::path::PathBuf;

use titan_checkpoint::{
    export_checkpoint, import_checkpoint, HfExportOptions, HfImportOptions, LlamaAdapter,
};

struct Args {
    from: String,
    to: String,
    input: PathBuf,
    output: PathBuf,
    config: Vec<String>,
    dtype: Option<candle_core::DType>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let (mut from, mut to, mut input, mut output, mut dtype) = (None, None, None, None, None);
    let mut config = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--from" => from = Some(value("--from")?),
            "--to" => to = Some(value("--to")?),
            "--input" => input = Some(PathBuf::from(value("--input")?)),
            "--output" => output = Some(PathBuf::from(value("--output")?)),
            "--dtype" => {
                dtype = Some(match value("--dtype")?.as_str() {
                    "float32" => candle_core::DType::F32,
                    "bfloat16" => candle_core::DType::BF16,
                    "float16" => candle_core::DType::F16,
                    d => {
                        return Err(format!(
                            "--dtype {d}: expected float32, bfloat16 or float16"
                        ))
                    }
                })
            }
            // Anything else describes the model, as for `train` (`--flavor 8B` is short for
            // `--model.flavor 8B`; `--config FILE` loads a training config).
            "--flavor" => config.extend(["--model.flavor".to_string(), value("--flavor")?]),
            other => config.push(other.to_string()),
        }
    }
    let need = |v: Option<String>, n: &str| v.ok_or_else(|| format!("convert needs {n}"));
    Ok(Args {
        from: need(from, "--from hf|titan")?,
        to: need(to, "--to titan|hf")?,
        input: input.ok_or("convert needs --input DIR")?,
        output: output.ok_or("convert needs --output DIR")?,
        config,
        dtype,
    })
}

pub fn convert_cmd(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    match (a.from.as_str(), a.to.as_str()) {
        ("hf", "titan") => {
            let adapter = LlamaAdapter::from_hf_config_file(&a.input.join("config.json")).map_err(|e| e.to_string())?;
            import_checkpoint(&a.input, &adapter, &a.output, &HfImportOptions { dtype: a.dtype }).map_err(|e| e.to_string())?;
        }
        ("titan", "hf") => {
            let cfg = titan_config::JobConfig::load(None, &a.config).map_err(|e| e.to_string())?;
            let tokenizer = titan_trainer::spec::default_tokenizer(&cfg).map_err(|e| e.to_string())?;
            // The model arguments as training built them (vocabulary from the tokenizer).
            let spec = titan_trainer::llama::llama3_spec();
            let model = (spec.build_model)(&cfg, Some(&tokenizer)).map_err(|e| e.to_string())?;
            let adapter = titan_trainer::llama::hf_adapter(&model.args).map_err(|e| e.to_string())?;
            let opts = HfExportOptions { dtype: a.dtype, ..Default::default() };
            export_checkpoint(&a.input, &adapter, &a.output, &opts).map_err(|e| e.to_string())?;
        }
        (f, t) => return Err(format!("convert --from {f} --to {t}: supported are --from hf --to titan and --from titan --to hf")),
    }
    println!("wrote {}", a.output.display());
    Ok(())
}
