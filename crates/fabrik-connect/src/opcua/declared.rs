//! What an OPC UA server declares about a writable node's values (decision 0094): the
//! `EURange` and `EngineeringUnits` properties of an analog item (OPC UA Part 8,
//! `AnalogItemType`), found by browse path and read in one request each.

use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowsePath, EUInformation, NodeId, QualifiedName, Range, ReadValueId,
    ReferenceTypeId, RelativePath, RelativePathElement, TimestampsToReturn, Variant,
};

use super::convert;

/// The properties read, by their standard browse names (namespace 0).
const EU_RANGE: &str = "EURange";
const ENGINEERING_UNITS: &str = "EngineeringUnits";

/// A node's declared range and unit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Declared {
    /// `EURange`, the range of the node's normal operation, as `(low, high)`; `Err` says why
    /// the node has the property but it is not a usable range (unreadable, not a `Range`,
    /// NaN, low above high). `None`: the node declares none.
    pub eu_range: Option<Result<(f64, f64), String>>,
    /// `EngineeringUnits`' display name (`°C`, `bottles/min`), when the node declares one.
    pub unit: Option<String>,
}

impl Declared {
    /// The declared range when it is usable.
    pub fn usable_range(&self) -> Option<(f64, f64)> {
        self.eu_range
            .as_ref()
            .and_then(|r| r.as_ref().ok().copied())
    }
}

/// Nodes looked up per request: servers cap the operations of one request (Part 4's
/// `MaxNodesPerTranslateBrowsePathsToNodeIds`, `MaxNodesPerRead`), often at a few hundred.
const NODES_PER_REQUEST: usize = 100;

/// The declarations of `nodes`, in their order: per hundred nodes, one
/// TranslateBrowsePathsToNodeIds for both properties of each, then one Read of the properties
/// found. The error is the service's (a request failed or timed out); a node without the
/// properties is `Declared::default()`.
pub(crate) async fn read_declared(
    session: &Session,
    nodes: &[NodeId],
    timeout: Duration,
) -> Result<Vec<Declared>, String> {
    let mut declared = Vec::with_capacity(nodes.len());
    for chunk in nodes.chunks(NODES_PER_REQUEST) {
        declared.extend(read_chunk(session, chunk, timeout).await?);
    }
    Ok(declared)
}

async fn read_chunk(
    session: &Session,
    nodes: &[NodeId],
    timeout: Duration,
) -> Result<Vec<Declared>, String> {
    let paths: Vec<BrowsePath> = nodes
        .iter()
        .flat_map(|node| [EU_RANGE, ENGINEERING_UNITS].map(|name| property_path(node, name)))
        .collect();
    let found =
        super::write::with_timeout(timeout, session.translate_browse_paths_to_node_ids(&paths))
            .await?;
    // Per path: the property's node id, when the server found exactly one on this server.
    let targets: Vec<Option<NodeId>> = (0..paths.len())
        .map(|i| {
            let result = found.get(i)?;
            if result.status_code.is_bad() {
                return None;
            }
            let target = result.targets.as_ref()?.first()?;
            let local = target.target_id.server_index == 0
                && target.target_id.namespace_uri.is_null()
                && target.remaining_path_index == u32::MAX;
            local.then(|| target.target_id.node_id.clone())
        })
        .collect();
    let reads: Vec<ReadValueId> = targets
        .iter()
        .flatten()
        .map(|node_id| ReadValueId {
            node_id: node_id.clone(),
            attribute_id: AttributeId::Value as u32,
            ..Default::default()
        })
        .collect();
    let mut values = if reads.is_empty() {
        Vec::new()
    } else {
        super::write::with_timeout(
            timeout,
            session.read(&reads, TimestampsToReturn::Neither, 0.0),
        )
        .await?
    }
    .into_iter();
    let mut read_next = |target: &Option<NodeId>| {
        target.as_ref().map(|_| {
            values.next().map_or_else(
                || Err("the server's answer had no value for it".to_owned()),
                |value| match value.status {
                    Some(status) if status.is_bad() => Err(convert::status_text(status)),
                    _ => Ok(value.value.unwrap_or(Variant::Empty)),
                },
            )
        })
    };
    Ok(targets
        .chunks(2)
        .map(|pair| {
            let eu_range = read_next(&pair[0]).map(|read| read.and_then(|v| range_of(&v)));
            let unit = read_next(&pair[1])
                .and_then(Result::ok)
                .and_then(|v| unit_of(&v));
            Declared { eu_range, unit }
        })
        .collect())
}

/// `node`'s property `name`: one HasProperty step (or a subtype) to the standard browse name.
fn property_path(node: &NodeId, name: &str) -> BrowsePath {
    BrowsePath {
        starting_node: node.clone(),
        relative_path: RelativePath {
            elements: Some(vec![RelativePathElement {
                reference_type_id: ReferenceTypeId::HasProperty.into(),
                is_inverse: false,
                include_subtypes: true,
                target_name: QualifiedName::new(0, name),
            }]),
        },
    }
}

/// An `EURange` value as a usable range, or why it is not one.
pub(crate) fn range_of(value: &Variant) -> Result<(f64, f64), String> {
    let mut value = value;
    while let Variant::Variant(inner) = value {
        value = inner;
    }
    let Variant::ExtensionObject(object) = value else {
        return Err(format!(
            "its EURange holds {}, not a Range",
            value
                .scalar_type_id()
                .map_or_else(|| "no value".to_owned(), |t| format!("a {t:?}"))
        ));
    };
    let Some(range) = object.inner_as::<Range>() else {
        return Err("its EURange holds a structure that is not a Range".to_owned());
    };
    let (low, high) = (range.low, range.high);
    if low.is_nan() || high.is_nan() {
        return Err(format!("its EURange {low}..{high} is not a number"));
    }
    if low > high {
        return Err(format!("its EURange's low {low} is above its high {high}"));
    }
    Ok((low, high))
}

/// An `EngineeringUnits` value's display name, when it has one.
fn unit_of(value: &Variant) -> Option<String> {
    let Variant::ExtensionObject(object) = value else {
        return None;
    };
    let text = object
        .inner_as::<EUInformation>()?
        .display_name
        .text
        .as_ref();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use opcua::types::{ExtensionObject, LocalizedText};

    use super::*;

    fn range(low: f64, high: f64) -> Variant {
        Variant::from(ExtensionObject::from_message(Range { low, high }))
    }

    #[test]
    fn an_eu_range_is_usable_only_as_a_range_with_low_at_most_high() {
        assert_eq!(range_of(&range(0.0, 80.0)), Ok((0.0, 80.0)));
        assert_eq!(range_of(&range(5.0, 5.0)), Ok((5.0, 5.0)));
        let nested = Variant::Variant(Box::new(range(-1.0, 1.0)));
        assert_eq!(range_of(&nested), Ok((-1.0, 1.0)));
        assert_eq!(
            range_of(&range(50.0, 10.0)),
            Err("its EURange's low 50 is above its high 10".to_owned())
        );
        let e = range_of(&range(f64::NAN, 10.0)).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = range_of(&Variant::Double(3.0)).unwrap_err();
        assert_eq!(e, "its EURange holds a Double, not a Range");
        let other = Variant::from(ExtensionObject::from_message(EUInformation::default()));
        let e = range_of(&other).unwrap_err();
        assert!(e.contains("not a Range"), "{e}");
    }

    #[test]
    fn a_unit_is_its_display_name() {
        let unit = |text: &str| {
            Variant::from(ExtensionObject::from_message(EUInformation {
                display_name: LocalizedText::new("en", text),
                ..Default::default()
            }))
        };
        assert_eq!(unit_of(&unit("l/min")), Some("l/min".to_owned()));
        assert_eq!(unit_of(&unit("  ")), None);
        assert_eq!(unit_of(&Variant::Double(1.0)), None);
    }

    #[test]
    fn each_property_is_one_has_property_step_to_its_standard_name() {
        let path = property_path(&NodeId::new(2, "Pump1.Flow"), EU_RANGE);
        assert_eq!(path.starting_node, NodeId::new(2, "Pump1.Flow"));
        let elements = path.relative_path.elements.expect("one element");
        assert_eq!(elements.len(), 1);
        assert_eq!(
            elements[0].reference_type_id,
            NodeId::from(ReferenceTypeId::HasProperty)
        );
        assert!(elements[0].include_subtypes && !elements[0].is_inverse);
        assert_eq!(elements[0].target_name, QualifiedName::new(0, "EURange"));
    }
}
