//! Writing the merged configuration: `--job.print_config` and the copy in the dump folder.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sections::JobConfig;

/// File name of the saved config when `job.save_config_file` is unset.
pub const DEFAULT_SAVE_NAME: &str = "config.toml";

impl JobConfig {
    /// The merged configuration as TOML, loadable again with `--job.config_file`.
    /// Unset optional options are left out (TOML has no null).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Serialize(e.to_string()))
    }

    /// Where [`JobConfig::save_to_dump_folder`] writes: `<job.dump_folder>/<job.save_config_file>`,
    /// or `<job.dump_folder>/config.toml` when `save_config_file` is unset.
    pub fn config_save_path(&self) -> PathBuf {
        let name = self
            .job
            .save_config_file
            .as_deref()
            .unwrap_or(DEFAULT_SAVE_NAME);
        Path::new(&self.job.dump_folder).join(name)
    }

    /// Saves the merged configuration at [`JobConfig::config_save_path`] (creating folders):
    /// JSON when the name ends in `.json` (torchtitan's format), TOML otherwise.
    pub fn save_to_dump_folder(&self) -> Result<PathBuf> {
        let path = self.config_save_path();
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let text = if is_json {
            serde_json::to_string_pretty(self).map_err(|e| Error::Serialize(e.to_string()))?
        } else {
            self.to_toml_string()?
        };
        let write_error = |source| Error::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        std::fs::write(&path, text).map_err(write_error)?;
        tracing::info!("saved job config to {}", path.display());
        Ok(path)
    }
}
