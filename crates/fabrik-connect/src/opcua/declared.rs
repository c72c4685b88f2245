//! What an OPC UA server declares about a variable's values (decision 0094): the
//! `EURange` and `EngineeringUnits` properties of an analog item (OPC UA Part 8,
//! `AnalogItemType`), found by browse path, and the node's own `DataType`.

use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowsePath, BrowsePathResult, DataValue, EUInformation, NodeId, QualifiedName,
    Range, ReadValueId, ReferenceTypeId, RelativePath, RelativePathElement, StatusCode,
    TimestampsToReturn, Variant,
};

use super::convert;

/// The properties read, by their standard browse names (namespace 0).
const EU_RANGE: &str = "EURange";
const ENGINEERING_UNITS: &str = "EngineeringUnits";

/// A node's declared type, range and unit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Declared {
    /// The node's `DataType` attribute by name when it is a concrete Boolean, number or String type
    /// (`Double`, `Boolean`, `Int16`); `None` for any other type or when it could not be read.
    pub data_type: Option<String>,
    /// `EURange`, the range of the node's normal operation, as `(low, high)`; `Err` says why
    /// it cannot be used: the value the node declares is not a range (not a `Range`, NaN, low
    /// above high), or, in the list of setpoints after a lookup that failed on connecting,
    /// why it is not known. `None`: the node declares none.
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

/// Whether a configured range and a declared one have no value in common: every write is
/// refused.
pub(crate) fn disjoint((min, max): (f64, f64), (low, high): (f64, f64)) -> bool {
    min > high || max < low
}

/// Nodes looked up per request: two browse paths each, and servers cap the operations of one
/// request (Part 4's `MaxNodesPerTranslateBrowsePathsToNodeIds`, `MaxNodesPerRead`), often at
/// a few hundred.
pub(crate) const NODES_PER_REQUEST: usize = 50;

/// Why a node's `EURange` could not be known: it may declare a narrower range than the one
/// configured, so a number is not written to it. `data_type` is what the lookup did learn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LookupFailed {
    /// What went wrong, naming the property.
    pub(crate) why: String,
    /// The node's type, as [`Declared::data_type`].
    pub(crate) data_type: Option<String>,
}

/// The declarations of `nodes` (at most [`NODES_PER_REQUEST`]), in their order: one
/// TranslateBrowsePathsToNodeIds for both properties of each, then one Read of each node's
/// `DataType` and of the properties found. A server that does not implement the translate
/// (the View service set is optional for small servers) declares no properties. The outer
/// error is the service's (a request failed, timed out, or answered the wrong number of
/// results); the inner one a node's own, about its `EURange` only: a browse path the server
/// could not follow (anything but `BadNoMatch`, which means no such property), a property it
/// names elsewhere or twice, one it would not read or that holds no value. A unit that cannot
/// be read is left out.
pub(crate) async fn read_declared(
    session: &Session,
    nodes: &[NodeId],
    timeout: Duration,
) -> Result<Vec<Result<Declared, LookupFailed>>, StatusCode> {
    let paths: Vec<BrowsePath> = nodes
        .iter()
        .flat_map(|node| [EU_RANGE, ENGINEERING_UNITS].map(|name| property_path(node, name)))
        .collect();
    let translated =
        super::write::call_within(timeout, session.translate_browse_paths_to_node_ids(&paths))
            .await;
    let targets: Vec<Result<Option<NodeId>, String>> = match translated {
        Ok(found) if found.len() == paths.len() => found.iter().map(property_target).collect(),
        Ok(_) => return Err(StatusCode::BadUnexpectedError),
        Err(status) if declares_nothing(status) => vec![Ok(None); paths.len()],
        Err(status) => return Err(status),
    };
    let read = |node_id: &NodeId, attribute: AttributeId| ReadValueId {
        node_id: node_id.clone(),
        attribute_id: attribute as u32,
        ..Default::default()
    };
    let reads: Vec<ReadValueId> = nodes
        .iter()
        .map(|node| read(node, AttributeId::DataType))
        .chain(
            targets
                .iter()
                .filter_map(|t| t.as_ref().ok().and_then(Option::as_ref))
                .map(|property| read(property, AttributeId::Value)),
        )
        .collect();
    let values = super::write::call_within(
        timeout,
        session.read(&reads, TimestampsToReturn::Neither, 0.0),
    )
    .await?;
    if values.len() != reads.len() {
        return Err(StatusCode::BadUnexpectedError);
    }
    let (types, properties) = values.split_at(nodes.len());
    let mut properties = properties.iter();
    // A property's value, `None` when the node has no such property.
    let mut value_of = |target: &Result<Option<NodeId>, String>, name: &str| match target {
        Err(why) => Err(format!("its {name}: {why}")),
        Ok(None) => Ok(None),
        Ok(Some(_)) => {
            let value = properties
                .next()
                .ok_or_else(|| "the server's answer was short".to_owned())?;
            match (value.status, &value.value) {
                (Some(status), _) if status.is_bad() => Err(format!(
                    "its {name} could not be read: {}",
                    convert::status_text(status)
                )),
                (_, Some(variant)) if !holds_nothing(variant) => Ok(Some(variant.clone())),
                _ => Err(format!("its {name} holds no value")),
            }
        }
    };
    Ok(targets
        .chunks_exact(2)
        .zip(types)
        .map(|(pair, data_type)| {
            let data_type = writable_type_name(data_type);
            let eu_range = value_of(&pair[0], EU_RANGE);
            // The unit has no bearing on what may be written: one that cannot be read is
            // left out, not a failed lookup.
            let unit = value_of(&pair[1], ENGINEERING_UNITS)
                .ok()
                .flatten()
                .and_then(|v| unit_of(&v));
            match eu_range {
                Ok(eu_range) => Ok(Declared {
                    data_type,
                    eu_range: eu_range.map(|v| range_of(&v)),
                    unit,
                }),
                Err(why) => Err(LookupFailed { why, data_type }),
            }
        })
        .collect())
}

/// Whether a failure of TranslateBrowsePathsToNodeIds means the server offers no way to
/// declare anything: it does not implement the service.
pub(crate) fn declares_nothing(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BadServiceUnsupported
            | StatusCode::BadNotImplemented
            | StatusCode::BadNotSupported
    )
}

/// An empty variant, or an extension object with no body: a property with nothing in it.
fn holds_nothing(value: &Variant) -> bool {
    match value {
        Variant::Empty => true,
        Variant::ExtensionObject(object) => object.is_null(),
        Variant::Variant(inner) => holds_nothing(inner),
        _ => false,
    }
}

/// Where a browse path led: the property's node id, `None` when the node has no such property
/// (`BadNoMatch`, or no target), or why it cannot be used.
fn property_target(result: &BrowsePathResult) -> Result<Option<NodeId>, String> {
    if result.status_code == StatusCode::BadNoMatch {
        return Ok(None);
    }
    if result.status_code.is_bad() {
        return Err(format!(
            "the server could not look it up: {}",
            convert::status_text(result.status_code)
        ));
    }
    let targets = result.targets.as_deref().unwrap_or_default();
    let local: Vec<_> = targets
        .iter()
        .filter(|t| {
            t.target_id.server_index == 0
                && t.target_id.namespace_uri.is_null()
                && t.remaining_path_index == u32::MAX
        })
        .collect();
    match (local.as_slice(), targets.is_empty()) {
        ([target], _) => Ok(Some(target.target_id.node_id.clone())),
        ([], true) => Ok(None),
        ([], false) => Err(
            "the server names it only on another server or by namespace URI, \
                            which Fabrik does not follow"
                .to_owned(),
        ),
        (_, _) => Err("the node has more than one such property".to_owned()),
    }
}

/// The name of a node's `DataType` when it is a concrete Boolean, number or String type, the types a
/// write converts to (`Double`, `Boolean`); `None` for any other, abstract or custom type, or
/// when it could not be read.
fn writable_type_name(value: &DataValue) -> Option<String> {
    if value.status.is_some_and(|status| status.is_bad()) {
        return None;
    }
    match value.value.as_ref()? {
        Variant::NodeId(id) => {
            super::write::template_of(id).map(|template| super::write::type_name(&template))
        }
        _ => None,
    }
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
    if object.is_null() {
        return Err("its EURange holds no value".to_owned());
    }
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
    let mut value = value;
    while let Variant::Variant(inner) = value {
        value = inner;
    }
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
    fn only_the_types_a_write_converts_to_are_named() {
        use opcua::types::DataTypeId;
        let named = |id: NodeId| writable_type_name(&DataValue::value_only(Variant::from(id)));
        assert_eq!(named(DataTypeId::Double.into()), Some("Double".to_owned()));
        assert_eq!(
            named(DataTypeId::Boolean.into()),
            Some("Boolean".to_owned())
        );
        // Text (decision 0095).
        assert_eq!(named(DataTypeId::String.into()), Some("String".to_owned()));
        // Abstract and other types: the node's value decides at the write.
        assert_eq!(named(DataTypeId::BaseDataType.into()), None);
        assert_eq!(named(DataTypeId::Number.into()), None);
        assert_eq!(named(DataTypeId::LocalizedText.into()), None);
        assert_eq!(named(NodeId::new(2, "Custom")), None);
    }

    #[test]
    fn a_browse_path_says_no_property_only_with_bad_no_match_or_no_target() {
        use opcua::types::{BrowsePathTarget, ExpandedNodeId};
        let result = |status_code, targets: Option<Vec<BrowsePathTarget>>| BrowsePathResult {
            status_code,
            targets,
        };
        let target = |node: NodeId, remaining| BrowsePathTarget {
            target_id: ExpandedNodeId::from(node),
            remaining_path_index: remaining,
        };
        assert_eq!(
            property_target(&result(StatusCode::BadNoMatch, None)),
            Ok(None)
        );
        assert_eq!(property_target(&result(StatusCode::Good, None)), Ok(None));
        let here = NodeId::new(2, "X.EURange");
        assert_eq!(
            property_target(&result(
                StatusCode::Good,
                Some(vec![target(here.clone(), u32::MAX)])
            )),
            Ok(Some(here.clone()))
        );
        // Any other failure is not "no property": the write cannot be judged.
        let e = property_target(&result(StatusCode::BadUserAccessDenied, None)).unwrap_err();
        assert!(e.contains("BadUserAccessDenied"), "{e}");
        // A path the server did not follow to its end is not the property.
        let e = property_target(&result(
            StatusCode::Good,
            Some(vec![target(here.clone(), 0)]),
        ))
        .unwrap_err();
        assert!(e.contains("another server"), "{e}");
        let e = property_target(&result(
            StatusCode::Good,
            Some(vec![target(here.clone(), u32::MAX), target(here, u32::MAX)]),
        ))
        .unwrap_err();
        assert!(e.contains("more than one"), "{e}");
    }

    #[test]
    fn only_a_server_without_the_view_services_declares_nothing() {
        assert!(declares_nothing(StatusCode::BadServiceUnsupported));
        assert!(declares_nothing(StatusCode::BadNotImplemented));
        assert!(!declares_nothing(StatusCode::BadTimeout));
        assert!(!declares_nothing(StatusCode::BadUserAccessDenied));
    }

    #[test]
    fn a_property_with_nothing_in_it_holds_nothing() {
        assert!(holds_nothing(&Variant::Empty));
        assert!(holds_nothing(&Variant::from(ExtensionObject::null())));
        assert!(!holds_nothing(&range(0.0, 1.0)));
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
