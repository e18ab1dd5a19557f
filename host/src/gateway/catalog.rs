//! `CatalogService.List`: the domains and types a caller may read, with
//! their counts.
//!
//! The call is authorized like any other (the request policy sees
//! `/stategate.CatalogService/List` and its `domain`, `*` when it names
//! none), then the listing is filtered entry by entry: an entry is shown
//! only if the same caller would be allowed a `StateService.Search` of its
//! domain and type (the request policy and the tenant's hook, asked
//! through `Auth::permits`, which counts no denial). The response policy
//! then sees the whole listing, as for any unary call. So a tenant policy
//! that confines a caller to its domains also confines what it can learn
//! exists.

use super::{CatalogRequest, Gateway, SearchStatesRequest, methods};
use crate::auth::Metadata;
use crate::model::{Catalog, CatalogEntry, Result, json, validate_name};
use serde_json::Value;
use std::sync::Arc;

impl Gateway {
    pub async fn catalog(&self, metadata: Metadata, req: CatalogRequest) -> Result<Catalog> {
        let asked = if req.domain.is_empty() { "*" } else { req.domain.as_str() };
        let caller = self.admit(methods::CATALOG_LIST, metadata, &req, false, asked).await?;
        let domain = match asked {
            "*" => None,
            d => {
                validate_name("domain", d)?;
                Some(d)
            }
        };
        // Read first: every event up to `head` is in the counts.
        let head = self.timed(&self.storage_calls, "head", self.storage.head()).await?;
        let entries = self.timed(&self.storage_calls, "catalog", self.storage.catalog(domain)).await?;

        let mut input = caller.input.clone();
        input.method = methods::STATE_SEARCH.to_owned();
        let mut readable = Vec::with_capacity(entries.len());
        for entry in entries {
            input.body = Arc::new(self.search_body(&entry)?);
            input.domain = Some(entry.domain.clone());
            if self.auth.permits(&input).await? {
                readable.push(entry);
            }
        }
        let catalog = Catalog { entries: readable, head };
        self.authorized_response(caller, asked, catalog, json::catalog, json::parse_catalog).await
    }

    /// The body of a search of `entry`'s domain and type, as its request
    /// policy would see it (only built when a policy reads bodies).
    fn search_body(&self, entry: &CatalogEntry) -> Result<Value> {
        if !self.auth.inspects_bodies() {
            return Ok(Value::Null);
        }
        let search = SearchStatesRequest {
            domain: entry.domain.clone(),
            ty: entry.ty.clone(),
            ..Default::default()
        };
        serde_json::to_value(search).map_err(crate::model::Error::internal)
    }
}
