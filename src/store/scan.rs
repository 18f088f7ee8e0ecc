//! `SCAN` over the whole keyspace: the one server, or every master of a
//! Redis Cluster (a cluster's `SCAN` only walks the node that receives it).

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::Value;

use super::{Store, StoreError};

/// Keys fetched per `SCAN` call.
const SCAN_COUNT: usize = 1000;

impl Store {
    /// Every key matching the glob `pattern`, on every master. Each command
    /// is bounded by the timeout; a key may be missed or seen twice if the
    /// cluster reshards during the walk (as with any `SCAN`).
    pub async fn scan(&self, pattern: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        if !self.config().cluster {
            self.scan_node(pattern, None, &mut keys).await?;
            return Ok(keys);
        }
        for slot in self.master_slots().await? {
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                slot,
                SlotAddr::Master,
            )));
            self.scan_node(pattern, Some(&route), &mut keys).await?;
        }
        Ok(keys)
    }

    pub fn scan_blocking(&self, pattern: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.block_on(self.scan(pattern))
    }

    /// One slot served by each master (`CLUSTER SLOTS`): routing a command
    /// by that slot reaches that master.
    async fn master_slots(&self) -> Result<Vec<u16>, StoreError> {
        let reply = self
            .query(&redis::cmd("CLUSTER").arg("SLOTS").clone())
            .await?;
        let bad = || StoreError::Reply(format!("unexpected CLUSTER SLOTS reply {reply:?}"));
        let Value::Array(ranges) = &reply else {
            return Err(bad());
        };
        let mut masters: Vec<(Vec<u8>, i64)> = Vec::new();
        let mut slots = Vec::new();
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err(bad());
            };
            let (Some(Value::Int(start)), Some(Value::Array(master))) =
                (fields.first(), fields.get(2))
            else {
                return Err(bad());
            };
            let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
                (master.first(), master.get(1))
            else {
                return Err(bad());
            };
            let node = (host.clone(), *port);
            if !masters.contains(&node) {
                masters.push(node);
                slots.push(u16::try_from(*start).map_err(|_| bad())?);
            }
        }
        Ok(slots)
    }

    async fn scan_node(
        &self,
        pattern: &str,
        route: Option<&RoutingInfo>,
        keys: &mut Vec<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut cursor = 0_u64;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let reply = self.query_routed(&cmd, route).await?;
            let Value::Array(reply) = reply else {
                return Err(StoreError::Reply(format!(
                    "unexpected SCAN reply {reply:?}"
                )));
            };
            let [Value::BulkString(next), Value::Array(batch)] = reply.as_slice() else {
                return Err(StoreError::Reply(format!(
                    "unexpected SCAN reply {reply:?}"
                )));
            };
            keys.extend(batch.iter().filter_map(|k| match k {
                Value::BulkString(b) => Some(b.clone()),
                _ => None,
            }));
            cursor = std::str::from_utf8(next)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Reply(format!("unexpected SCAN cursor {next:?}")))?;
            if cursor == 0 {
                return Ok(());
            }
        }
    }
}
