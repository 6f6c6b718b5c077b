//! Reading diffusers' `config.json` of a `UNet2DModel` into a [`UNetConfig`].

use serde_json::{Map, Value};
use tensor::Result;

use super::config::{invalid, DownBlockType, UNetConfig, UpBlockType};

impl UNetConfig {
    /// Reads diffusers' `config.json` of a `UNet2DModel`. Missing keys take diffusers'
    /// defaults; keys this implementation cannot honour (other block types, activations,
    /// Fourier time embedding, class conditioning, "scale_shift" norm) are errors, and keys
    /// that do not change the network (`_diffusers_version`, `num_train_timesteps`) are ignored.
    pub fn from_diffusers_json(json: &str) -> Result<UNetConfig> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| invalid(format!("config.json is not valid JSON: {e}")))?;
        let map = value
            .as_object()
            .ok_or_else(|| invalid("config.json is not a JSON object".into()))?;
        let r = Reader(map);
        if let Some(class) = r.string("_class_name")? {
            if class != "UNet2DModel" {
                return Err(invalid(format!(
                    "_class_name is `{class}`, expected UNet2DModel"
                )));
            }
        }
        r.expect_string("time_embedding_type", "positional")?;
        r.expect_string("act_fn", "silu")?;
        r.expect_string("resnet_time_scale_shift", "default")?;
        r.expect_string("downsample_type", "conv")?;
        r.expect_string("upsample_type", "conv")?;
        r.expect_string("mid_block_type", "UNetMidBlock2D")?;
        if r.0.get("mid_block_type").is_some_and(Value::is_null) {
            return Err(invalid(
                "mid_block_type is null: a UNet without mid block is not supported".into(),
            ));
        }
        for key in ["class_embed_type", "num_class_embeds"] {
            if r.0.get(key).is_some_and(|v| !v.is_null()) {
                return Err(invalid(format!(
                    "{key} is set: class conditioning is not supported"
                )));
            }
        }
        let d = UNetConfig::default();
        let sample_size = match r.0.get("sample_size") {
            None | Some(Value::Null) => None,
            Some(Value::Array(hw)) if hw.len() == 2 && hw[0] == hw[1] => {
                Some(r.usize_of("sample_size", &hw[0])?)
            }
            Some(v) => Some(r.usize_of("sample_size", v)?),
        };
        let attention_head_dim = match r.0.get("attention_head_dim") {
            None => d.attention_head_dim,
            Some(Value::Null) => None,
            Some(v) => Some(r.usize_of("attention_head_dim", v)?),
        };
        let attn_norm_num_groups = match r.0.get("attn_norm_num_groups") {
            None | Some(Value::Null) => None,
            Some(v) => Some(r.usize_of("attn_norm_num_groups", v)?),
        };
        let down_block_types = match r.strings("down_block_types")? {
            None => d.down_block_types,
            Some(names) => names
                .iter()
                .map(|n| DownBlockType::parse(n))
                .collect::<Result<_>>()?,
        };
        let up_block_types = match r.strings("up_block_types")? {
            None => d.up_block_types,
            Some(names) => names
                .iter()
                .map(|n| UpBlockType::parse(n))
                .collect::<Result<_>>()?,
        };
        let block_out_channels = match r.0.get("block_out_channels") {
            None => d.block_out_channels,
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| r.usize_of("block_out_channels", v))
                .collect::<Result<_>>()?,
            Some(v) => {
                return Err(invalid(format!(
                    "block_out_channels is {v}, expected a list"
                )))
            }
        };
        let config = UNetConfig {
            sample_size,
            in_channels: r.usize("in_channels")?.unwrap_or(d.in_channels),
            out_channels: r.usize("out_channels")?.unwrap_or(d.out_channels),
            center_input_sample: r.bool("center_input_sample")?.unwrap_or(false),
            block_out_channels,
            layers_per_block: r.usize("layers_per_block")?.unwrap_or(d.layers_per_block),
            down_block_types,
            up_block_types,
            norm_num_groups: r.usize("norm_num_groups")?.unwrap_or(d.norm_num_groups),
            attn_norm_num_groups,
            norm_eps: r.f32("norm_eps")?.unwrap_or(d.norm_eps),
            dropout: r.f32("dropout")?.unwrap_or(d.dropout),
            attention_head_dim,
            flip_sin_to_cos: r.bool("flip_sin_to_cos")?.unwrap_or(d.flip_sin_to_cos),
            freq_shift: r.f32("freq_shift")?.unwrap_or(d.freq_shift),
            downsample_padding: r.usize("downsample_padding")?.unwrap_or(1),
            mid_block_scale_factor: r.f32("mid_block_scale_factor")?.unwrap_or(1.0),
            add_attention: r.bool("add_attention")?.unwrap_or(true),
            time_embedding_dim: r.usize("time_embedding_dim")?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Typed access to the keys of a config object, with errors naming the key.
struct Reader<'a>(&'a Map<String, Value>);

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn usize_of(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| invalid(format!("{key} is {v}, expected a non-negative integer")))
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| self.usize_of(key, v)).transpose()
    }

    fn f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| invalid(format!("{key} is {v}, expected a number")))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| invalid(format!("{key} is {v}, expected true or false")))
            })
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| invalid(format!("{key} is {v}, expected a string")))
            })
            .transpose()
    }

    fn expect_string(&self, key: &str, supported: &str) -> Result<()> {
        match self.string(key)? {
            Some(s) if s != supported => Err(invalid(format!(
                "{key} `{s}` is not supported (expected `{supported}`)"
            ))),
            _ => Ok(()),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| invalid(format!("{key} is {v}, expected a list of names")))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| invalid(format!("{key}: {item} is not a name")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// google/ddpm-cifar10-32's config.json as published on the Hub.
    const CIFAR10_JSON: &str = r#"{
        "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4",
        "act_fn": "silu", "attention_head_dim": null,
        "block_out_channels": [128, 256, 256, 256], "center_input_sample": false,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1,
        "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    }"#;

    #[test]
    fn the_cifar10_config_reads_as_the_preset_without_dropout() {
        let config = UNetConfig::from_diffusers_json(CIFAR10_JSON).unwrap();
        let preset = UNetConfig {
            dropout: 0.0,
            ..UNetConfig::ddpm_cifar10()
        };
        assert_eq!(config, preset);
    }

    #[test]
    fn missing_keys_take_diffusers_defaults() {
        let config = UNetConfig::from_diffusers_json("{}").unwrap();
        assert_eq!(config, UNetConfig::default());
    }

    #[test]
    fn unsupported_values_are_errors_that_name_the_key() {
        let cases = [
            (
                r#"{"down_block_types": ["CrossAttnDownBlock2D"]}"#,
                "CrossAttnDownBlock2D",
            ),
            (
                r#"{"time_embedding_type": "fourier"}"#,
                "time_embedding_type",
            ),
            (r#"{"act_fn": "gelu"}"#, "act_fn"),
            (
                r#"{"resnet_time_scale_shift": "scale_shift"}"#,
                "resnet_time_scale_shift",
            ),
            (r#"{"num_class_embeds": 10}"#, "class conditioning"),
            (r#"{"norm_num_groups": 5}"#, "does not divide"),
            (r#"{"mid_block_type": null}"#, "mid_block_type"),
            (r#"{"_class_name": "UNet2DConditionModel"}"#, "UNet2DModel"),
            (r#"{"layers_per_block": "two"}"#, "layers_per_block"),
            ("[1]", "JSON object"),
        ];
        for (json, expected) in cases {
            let err = UNetConfig::from_diffusers_json(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}

impl UNetConfig {
    /// diffusers' `config.json` for this model: [`UNetConfig::from_diffusers_json`] reads it
    /// back unchanged, and diffusers' `UNet2DModel.from_pretrained` builds the same network.
    pub fn to_diffusers_json(&self) -> String {
        let value = serde_json::json!({
            "_class_name": "UNet2DModel",
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "center_input_sample": self.center_input_sample,
            "time_embedding_type": "positional",
            "time_embedding_dim": self.time_embedding_dim,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "down_block_types": self.down_block_types.iter().map(|b| b.name()).collect::<Vec<_>>(),
            "up_block_types": self.up_block_types.iter().map(|b| b.name()).collect::<Vec<_>>(),
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "downsample_padding": self.downsample_padding,
            "act_fn": "silu",
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "attn_norm_num_groups": self.attn_norm_num_groups,
            "norm_eps": self.norm_eps,
            "dropout": self.dropout,
            "add_attention": self.add_attention,
            "resnet_time_scale_shift": "default",
        });
        serde_json::to_string_pretty(&value).expect("a JSON value always serialises")
    }
}

#[cfg(test)]
mod round_trip {
    use super::*;

    #[test]
    fn every_preset_round_trips_through_config_json() {
        for name in ["shapes", "tiny", "small", "bench", "ddpm-cifar10"] {
            let config = UNetConfig::preset(name).unwrap();
            let back = UNetConfig::from_diffusers_json(&config.to_diffusers_json()).unwrap();
            assert_eq!(back, config, "{name}");
        }
    }
}
