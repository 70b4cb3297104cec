//! Spin's variable templates (`"https://{{ host }}/api"`) and where the
//! application's variables get their values: `SPIN_VARIABLE_NAME` in the
//! environment, as Spin reads them, then `--config name=VALUE`, then the
//! manifest's default; a `required` variable with none stops the load.

use std::collections::BTreeMap;

use super::manifest::Variable;

/// The value of every application variable that has one.
pub fn values(
    declared: &BTreeMap<String, Variable>,
    config: &[(String, String)],
    environment: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    for (name, variable) in declared {
        crate::imports::variables::check_spin_name(name)
            .map_err(|reason| format!("variable name `{name}`: {reason}"))?;
        let given = environment(name)
            .or_else(|| {
                config
                    .iter()
                    .rev()
                    .find(|(key, _)| key == name)
                    .map(|(_, v)| v.clone())
            })
            .or_else(|| variable.default.clone());
        match given {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None if variable.required => {
                return Err(format!(
                    "`{name}` is required and has no value: set SPIN_VARIABLE_{} or --config {name}=VALUE",
                    name.to_ascii_uppercase()
                ));
            }
            None => {}
        }
    }
    Ok(values)
}

/// `template` with each `{{ name }}` replaced by the variable's value; a
/// name with no value is an error, as in Spin.
pub fn render(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`{template}`: `{{{{` without `}}}}`"))?;
        let name = after[..end].trim();
        let value = values
            .get(name)
            .ok_or_else(|| format!("`{template}`: no value for variable `{name}`"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(pairs: &[(&str, Variable)]) -> BTreeMap<String, Variable> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn environment_beats_config_beats_default() {
        let vars = declared(&[
            (
                "a",
                Variable {
                    default: Some("default".into()),
                    ..Default::default()
                },
            ),
            (
                "b",
                Variable {
                    default: Some("default".into()),
                    ..Default::default()
                },
            ),
            (
                "c",
                Variable {
                    default: Some("default".into()),
                    ..Default::default()
                },
            ),
        ]);
        let config = [
            ("a".to_string(), "config".to_string()),
            ("b".to_string(), "config".to_string()),
        ];
        let values = values(&vars, &config, |name| {
            (name == "a").then(|| "env".to_string())
        })
        .unwrap();
        assert_eq!(values["a"], "env");
        assert_eq!(values["b"], "config");
        assert_eq!(values["c"], "default");
    }

    #[test]
    fn a_required_variable_without_a_value_stops_the_load() {
        let vars = declared(&[(
            "api_token",
            Variable {
                required: true,
                secret: true,
                ..Default::default()
            },
        )]);
        let err = values(&vars, &[], |_| None).unwrap_err();
        assert!(err.contains("SPIN_VARIABLE_API_TOKEN"), "{err}");
    }

    #[test]
    fn templates_render_and_refuse_unknown_names() {
        let values: BTreeMap<_, _> = [("host".to_string(), "api.test".to_string())].into();
        assert_eq!(
            render("https://{{ host }}/v1", &values).unwrap(),
            "https://api.test/v1"
        );
        assert_eq!(render("plain", &values).unwrap(), "plain");
        assert!(render("{{ nope }}", &values).is_err());
        assert!(render("{{ open", &values).is_err());
    }
}
