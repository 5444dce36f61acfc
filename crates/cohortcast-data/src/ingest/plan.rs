//! Running a query of the ingest plan: its batches handed on as they come.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::error::{IoError, Result};

pub(crate) type Plan = Arc<dyn datafusion::physical_plan::ExecutionPlan>;

/// Runs `sql` and hands every result batch to `each`.
pub(crate) async fn stream_sql(
    ctx: &SessionContext,
    sql: &str,
    context: &str,
    mut each: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<Plan> {
    let df = ctx.sql(sql).await.map_err(|e| IoError::engine(context, e))?;
    let plan = df.create_physical_plan().await.map_err(|e| IoError::engine(context, e))?;
    let mut stream = datafusion::physical_plan::execute_stream(plan.clone(), ctx.task_ctx())
        .map_err(|e| IoError::engine(context, e))?;
    while let Some(batch) = stream.next().await {
        each(&batch.map_err(|e| IoError::engine(context, e))?)?;
    }
    Ok(plan)
}
