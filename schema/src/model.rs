//! The schema model: classes, their properties, and the tables they map to.
//!
//! `schema!` builds these values at compile time (to render DDL and check the user's structs)
//! and emits code that builds the very same values at run time. This module must never do I/O.

use heck::ToSnakeCase;
use serde::{Deserialize, Serialize};

use crate::types::{ListItem, PropertyType, ScalarType};

/// One property of a class: a column of its table, or a list subtable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Property {
    /// The realm property name (the Rust field name).
    pub name: String,
    /// The column name in the class's table; for a list, the column part of the subtable name.
    pub column: String,
    /// The property's type.
    pub ty: PropertyType,
    /// `Option<T>`: the value may be missing (NULL).
    pub optional: bool,
    /// `#[primary_key]`.
    pub primary_key: bool,
    /// `#[indexed]`: the DDL creates an index on the column.
    pub indexed: bool,
    /// `#[postgres(type = "…")]`: the column's PostgreSQL type, overriding the type map.
    pub postgres_type: Option<String>,
    /// `#[postgres(custom_type = "…")]`: a user-defined PostgreSQL type (enum, domain) whose
    /// values convert as the property's realm type (the original's customPostgresTypes).
    pub custom_type: Option<String>,
}

impl Property {
    /// A required property whose column is the snake_case of its name.
    pub fn new(name: impl Into<String>, ty: PropertyType) -> Self {
        let name = name.into();
        Property {
            column: name.to_snake_case(),
            name,
            ty,
            optional: false,
            primary_key: false,
            indexed: false,
            postgres_type: None,
            custom_type: None,
        }
    }

    /// Set the column name.
    pub fn column(mut self, column: impl Into<String>) -> Self {
        self.column = column.into();
        self
    }

    /// Mark the property optional.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Mark the property as the primary key.
    pub fn primary_key(mut self) -> Self {
        self.primary_key = true;
        self
    }

    /// Ask for an index.
    pub fn indexed(mut self) -> Self {
        self.indexed = true;
        self
    }

    /// Override the PostgreSQL column type.
    pub fn postgres_type(mut self, ty: impl Into<String>) -> Self {
        self.postgres_type = Some(ty.into());
        self
    }

    /// Use a custom PostgreSQL type for the column.
    pub fn custom_type(mut self, ty: impl Into<String>) -> Self {
        self.custom_type = Some(ty.into());
        self
    }

    /// The scalar type of the column this property occupies in its class's table, if any:
    /// scalars are themselves, links take the target's primary key type (resolved by the caller),
    /// lists occupy no column.
    pub fn scalar(&self) -> Option<ScalarType> {
        self.ty.scalar()
    }
}

/// One class: a realm object type and the PostgreSQL table it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Class {
    /// The class name as written (`Bus`).
    pub name: String,
    /// The table name (`bus` unless given).
    pub table: String,
    /// Properties in declaration order.
    pub properties: Vec<Property>,
}

impl Class {
    /// A class whose table is the snake_case of its name.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Class {
            table: name.to_snake_case(),
            name,
            properties: Vec::new(),
        }
    }

    /// Set the table name.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Add a property.
    pub fn property(mut self, property: Property) -> Self {
        self.properties.push(property);
        self
    }

    /// The primary key property. Validated schemas have exactly one.
    pub fn primary_key(&self) -> Option<&Property> {
        self.properties.iter().find(|p| p.primary_key)
    }

    /// A property by realm name.
    pub fn property_named(&self, name: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// A property by column name (list properties excluded).
    pub fn property_by_column(&self, column: &str) -> Option<&Property> {
        self.properties
            .iter()
            .find(|p| !p.ty.is_list() && p.column == column)
    }

    /// Properties stored as columns of the class's own table, in declaration order.
    pub fn column_properties(&self) -> impl Iterator<Item = &Property> {
        self.properties.iter().filter(|p| !p.ty.is_list())
    }

    /// Properties stored in list subtables.
    pub fn list_properties(&self) -> impl Iterator<Item = &Property> {
        self.properties.iter().filter(|p| p.ty.is_list())
    }

    /// The subtable name of a list property: `<table>_<column>`.
    pub fn list_table(&self, property: &Property) -> String {
        format!("{}_{}", self.table, property.column)
    }
}

/// A whole schema: every class that syncs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schema {
    /// Classes in declaration order.
    pub classes: Vec<Class>,
}

/// A table the schema maps to: a class's own table or one of its list subtables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableRef<'a> {
    /// The table of a class.
    Class(&'a Class),
    /// The subtable of a list property.
    List {
        /// The class owning the list.
        class: &'a Class,
        /// The list property.
        property: &'a Property,
    },
}

impl TableRef<'_> {
    /// The table's name.
    pub fn name(&self) -> String {
        match self {
            TableRef::Class(c) => c.table.clone(),
            TableRef::List { class, property } => class.list_table(property),
        }
    }
}

impl Schema {
    /// A schema of these classes.
    pub fn new(classes: Vec<Class>) -> Self {
        Schema { classes }
    }

    /// A class by name.
    pub fn class(&self, name: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// The class mapped to a table.
    pub fn class_by_table(&self, table: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.table == table)
    }

    /// Every table: each class's table followed by its list subtables, in declaration order.
    pub fn tables(&self) -> Vec<TableRef<'_>> {
        let mut out = Vec::new();
        for class in &self.classes {
            out.push(TableRef::Class(class));
            for property in class.list_properties() {
                out.push(TableRef::List { class, property });
            }
        }
        out
    }

    /// The table (class or list subtable) with this name.
    pub fn table(&self, name: &str) -> Option<TableRef<'_>> {
        self.tables().into_iter().find(|t| t.name() == name)
    }

    /// The scalar type of a link to `class`: its primary key's type.
    pub fn key_type(&self, class: &str) -> Option<ScalarType> {
        self.class(class)?.primary_key()?.scalar()
    }

    /// The scalar type stored in the column of `property` (links resolve to the target's key
    /// type); `None` for lists or unresolved links.
    pub fn column_type(&self, property: &Property) -> Option<ScalarType> {
        match &property.ty {
            PropertyType::Scalar(s) => Some(*s),
            PropertyType::Link(target) => self.key_type(target),
            PropertyType::List(_) => None,
        }
    }

    /// The scalar type of a list's `target`/`value` column.
    pub fn list_item_type(&self, item: &ListItem) -> Option<ScalarType> {
        match item {
            ListItem::Scalar(s) => Some(*s),
            ListItem::Object(target) => self.key_type(target),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IntWidth;

    #[test]
    fn names_default_to_snake_case_and_lists_get_subtables() {
        let class = Class::new("BusStop")
            .property(
                Property::new("id", PropertyType::Scalar(ScalarType::Int(IntWidth::I64)))
                    .primary_key(),
            )
            .property(Property::new(
                "nextStops",
                PropertyType::List(ListItem::Object("BusStop".into())),
            ));
        assert_eq!(class.table, "bus_stop");
        let list = class.property_named("nextStops").unwrap();
        assert_eq!(class.list_table(list), "bus_stop_next_stops");
        let schema = Schema::new(vec![class]);
        let names: Vec<_> = schema.tables().iter().map(|t| t.name()).collect();
        assert_eq!(names, ["bus_stop", "bus_stop_next_stops"]);
    }
}
