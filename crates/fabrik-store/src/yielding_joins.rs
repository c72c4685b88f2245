//! Joins that give their thread back: a physical optimizer rule that makes every join's output
//! spend the query task's cooperative budget, so a query nobody waits for any more (its caller
//! disconnected or was stopped, or it timed out) is aborted within 128 of a join's output
//! batches — or, for a join that works long without output (a range join whose pairs mostly
//! fail its condition), at worst within 128 of the batches it reads, each of which it pairs
//! with every row it holds in a loop of DataFusion's that yields nowhere (decision 0089).
//!
//! A query's task is aborted by dropping it at its next yield to the runtime. DataFusion's own
//! rule (`EnsureCooperative`) makes the *scans* spend the budget, which suffices while the
//! batches come from reading. A join makes many output batches from one input batch held in
//! memory (a cross join of four 2,000-row tables makes 1.6 × 10¹³ rows while reading 8,000),
//! and an aggregate above it consumes them all in one poll: the task never yields, so neither
//! an abort nor the query timeout ends it, and a pool thread stays busy for hours.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PiecewiseMergeJoinExec, SortMergeJoinExec,
    SymmetricHashJoinExec,
};

/// Wraps every join in a [`CooperativeExec`]: each batch it hands on spends one unit of the
/// task's budget, and the task yields when the budget is gone (tokio's 128 units), which
/// costs a wake-up per some hundred batches.
#[derive(Debug, Default)]
pub(crate) struct YieldingJoins;

fn is_join(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<CrossJoinExec>()
        || plan.is::<NestedLoopJoinExec>()
        || plan.is::<HashJoinExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<SymmetricHashJoinExec>()
        || plan.is::<PiecewiseMergeJoinExec>()
}

impl PhysicalOptimizerRule for YieldingJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if is_join(node.as_ref()) {
                Ok(Transformed::yes(
                    Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "fabrik_yielding_joins"
    }

    fn schema_check(&self) -> bool {
        // A pass-through: the schema is the join's.
        true
    }
}
