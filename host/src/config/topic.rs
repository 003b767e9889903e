//! MQTT topics in the config: the filters a pipeline subscribes to (`farm/+/sensors/#`), and the
//! templates of the topics it publishes to (`farm/{key}/agg/1m`).

/// The longest topic MQTT allows, in bytes.
const MAX_TOPIC_BYTES: usize = 65_535;

/// Checks an MQTT topic filter: `+` is one whole level, `#` the whole last level.
pub fn check_filter(filter: &str) -> Result<(), String> {
    check_common(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') {
            if *level != "#" {
                return Err(format!(
                    "{filter:?}: '#' must be a whole level (like \"farm/#\"), not part of one"
                ));
            }
            if i + 1 != levels.len() {
                return Err(format!(
                    "{filter:?}: '#' matches every level below it, so it must be the last level \
                     (like \"farm/#\")"
                ));
            }
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "{filter:?}: '+' must be a whole level (like \"farm/+/sensors\"), not part of one"
            ));
        }
    }
    Ok(())
}

/// Checks a topic to publish to: no wildcards, and not one of the broker's own (`$SYS/...`).
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(format!(
            "{topic:?}: a topic to publish to cannot hold the wildcards '+' or '#'"
        ));
    }
    if topic.starts_with('$') {
        return Err(format!(
            "{topic:?}: topics starting with '$' belong to the broker; choose another first level"
        ));
    }
    Ok(())
}

fn check_common(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("a topic cannot be empty".into());
    }
    if topic.contains('\0') {
        return Err(format!("{topic:?}: a topic cannot hold a NUL character"));
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "a topic is at most {MAX_TOPIC_BYTES} bytes; this one has {}",
            topic.len()
        ));
    }
    Ok(())
}

/// A placeholder of an output topic template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    /// The pipeline's name.
    Pipeline,
    /// The record's key (with `/`, `+` and `#` replaced by `_`).
    Key,
    /// The window's kind (`tumbling`, ...).
    Window,
    /// The window's start, in ms since the Unix epoch.
    Start,
    /// The window's end, in ms since the Unix epoch.
    End,
}

impl Placeholder {
    pub const ALL: [Placeholder; 5] = [
        Placeholder::Pipeline,
        Placeholder::Key,
        Placeholder::Window,
        Placeholder::Start,
        Placeholder::End,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Pipeline => "pipeline",
            Placeholder::Key => "key",
            Placeholder::Window => "window",
            Placeholder::Start => "start",
            Placeholder::End => "end",
        }
    }
}

/// The placeholders of a template, in order. Fails on an unknown or unclosed one.
pub fn placeholders(template: &str) -> Result<Vec<Placeholder>, String> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        if rest[i..].starts_with('}') {
            return Err(format!(
                "{template:?} has a '}}' without a '{{'; placeholders are written {{key}}"
            ));
        }
        let after = &rest[i + 1..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "{template:?} has a '{{' without a '}}'; placeholders are written {{key}}"
            ));
        };
        let name = &after[..end];
        match Placeholder::ALL.into_iter().find(|p| p.name() == name) {
            Some(p) => found.push(p),
            None => {
                let known: Vec<String> = Placeholder::ALL
                    .iter()
                    .map(|p| format!("{{{}}}", p.name()))
                    .collect();
                return Err(format!(
                    "{template:?} has an unknown placeholder {{{name}}}; the placeholders are {}",
                    known.join(", ")
                ));
            }
        }
        rest = &after[end + 1..];
    }
    Ok(found)
}

/// Checks a template's topic syntax, with every placeholder filled in by a plain value.
pub fn check_template_topic(template: &str) -> Result<(), String> {
    let mut filled = template.to_owned();
    for p in Placeholder::ALL {
        filled = filled.replace(&format!("{{{}}}", p.name()), "x");
    }
    check_topic_name(&filled).map_err(|e| {
        // Report the template as written, not with the placeholders filled in.
        e.replacen(&format!("{filled:?}"), &format!("{template:?}"), 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_mqtt_wildcard_rules() {
        for ok in [
            "farm/+/sensors/#",
            "#",
            "+",
            "farm/north",
            "+/+",
            "a//b",
            "$SYS/#",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        let err = |f| check_filter(f).unwrap_err();
        assert!(err("farm/#/x").contains("must be the last level"));
        assert!(err("farm/sens#").contains("'#' must be a whole level"));
        assert!(err("farm/s+/x").contains("'+' must be a whole level"));
        assert_eq!(err(""), "a topic cannot be empty");
        assert!(err("a\0b").contains("NUL"));
    }

    #[test]
    fn topics_to_publish_to_have_no_wildcards() {
        assert_eq!(check_topic_name("farm/north/agg"), Ok(()));
        assert!(check_topic_name("farm/+/agg").is_err());
        assert!(check_topic_name("farm/#").is_err());
        assert!(check_topic_name("$SYS/x").is_err());
    }

    #[test]
    fn templates_name_known_placeholders() {
        assert_eq!(
            placeholders("farm/{key}/agg/{window}/{start}-{end}"),
            Ok(vec![
                Placeholder::Key,
                Placeholder::Window,
                Placeholder::Start,
                Placeholder::End
            ])
        );
        assert_eq!(placeholders("plain/topic"), Ok(vec![]));
        assert!(
            placeholders("farm/{keys}")
                .unwrap_err()
                .contains("unknown placeholder {keys}")
        );
        assert!(
            placeholders("farm/{key")
                .unwrap_err()
                .contains("without a '}'")
        );
        assert!(
            placeholders("farm/key}")
                .unwrap_err()
                .contains("without a '{'")
        );
        assert_eq!(check_template_topic("farm/{key}/agg"), Ok(()));
        assert_eq!(
            check_template_topic("farm/{key}/+"),
            Err(
                "\"farm/{key}/+\": a topic to publish to cannot hold the wildcards '+' or '#'"
                    .into()
            )
        );
    }
}
