//! Typed, checked access to a node's attributes ([`Attrs`]), used by the kernel builders at
//! load time. Errors are plain messages; the plan compiler adds the node name and op type.

use crate::proto::{AttributeProto, AttributeType, NodeProto};
use crate::tensor::Tensor;

/// The attributes of one node.
pub(crate) struct Attrs<'a> {
    attrs: &'a [AttributeProto],
}

impl<'a> Attrs<'a> {
    /// Wraps a node's attributes; fails on attribute references (only valid inside functions).
    pub(crate) fn new(node: &'a NodeProto) -> Result<Self, String> {
        if let Some(a) = node.attribute.iter().find(|a| !a.ref_attr_name.is_empty()) {
            return Err(format!(
                "attribute '{}' refers to a function attribute, which is not supported",
                a.name
            ));
        }
        Ok(Self {
            attrs: &node.attribute,
        })
    }

    fn get(
        &self,
        name: &str,
        expected: AttributeType,
    ) -> Result<Option<&'a AttributeProto>, String> {
        let Some(a) = self.attrs.iter().find(|a| a.name == name) else {
            return Ok(None);
        };
        // Type 0 (UNDEFINED) comes from very old writers; trust the field then.
        if a.r#type != 0 && a.r#type != expected as i32 {
            return Err(format!(
                "attribute '{name}' has type {:?}, expected {expected:?}",
                AttributeType::try_from(a.r#type).unwrap_or(AttributeType::Undefined)
            ));
        }
        Ok(Some(a))
    }

    /// True when the attribute is present.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.attrs.iter().any(|a| a.name == name)
    }

    /// An INT attribute or `default`.
    pub(crate) fn int_or(&self, name: &str, default: i64) -> Result<i64, String> {
        Ok(self.get(name, AttributeType::Int)?.map_or(default, |a| a.i))
    }

    /// An optional INT attribute.
    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, String> {
        Ok(self.get(name, AttributeType::Int)?.map(|a| a.i))
    }

    /// A FLOAT attribute or `default`.
    pub(crate) fn float_or(&self, name: &str, default: f32) -> Result<f32, String> {
        Ok(self
            .get(name, AttributeType::Float)?
            .map_or(default, |a| a.f))
    }

    /// A STRING attribute (UTF-8) or `default`.
    pub(crate) fn string_or(&self, name: &str, default: &str) -> Result<String, String> {
        match self.get(name, AttributeType::String)? {
            Some(a) => String::from_utf8(a.s.clone())
                .map_err(|_| format!("attribute '{name}' is not valid UTF-8")),
            None => Ok(default.to_string()),
        }
    }

    /// A FLOATS attribute, empty when absent.
    pub(crate) fn floats(&self, name: &str) -> Result<&'a [f32], String> {
        Ok(self
            .get(name, AttributeType::Floats)?
            .map_or(&[][..], |a| a.floats.as_slice()))
    }

    /// An INTS attribute, empty when absent.
    pub(crate) fn ints(&self, name: &str) -> Result<&'a [i64], String> {
        Ok(self
            .get(name, AttributeType::Ints)?
            .map_or(&[][..], |a| a.ints.as_slice()))
    }

    /// A STRINGS attribute (UTF-8), empty when absent.
    pub(crate) fn strings(&self, name: &str) -> Result<Vec<String>, String> {
        let Some(a) = self.get(name, AttributeType::Strings)? else {
            return Ok(Vec::new());
        };
        a.strings
            .iter()
            .map(|s| {
                String::from_utf8(s.clone())
                    .map_err(|_| format!("attribute '{name}' holds a string that is not UTF-8"))
            })
            .collect()
    }

    /// A TENSOR attribute.
    pub(crate) fn tensor(&self, name: &str) -> Result<Option<Tensor>, String> {
        let Some(a) = self.get(name, AttributeType::Tensor)? else {
            return Ok(None);
        };
        let t =
            a.t.as_ref()
                .ok_or_else(|| format!("attribute '{name}' has no tensor"))?;
        Tensor::from_proto(t).map(Some).map_err(|e| e.to_string())
    }
}
