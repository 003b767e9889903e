//! An operator on a thread of its own, driven from async code.
//!
//! Guest code never runs on the async executor's threads: the executor sends a batch over a
//! bounded channel and awaits the answer, so a slow plugin delays only its own pipeline step.
//! A hot swap is prepared (instantiated and initialised) on a blocking thread and travels down
//! the same channel as the batches, so it takes effect exactly between two batches.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context as _, anyhow};
use tokio::sync::{mpsc, oneshot};

use super::bindings::{Batch, Message};
use super::metrics::OperatorMetrics;
use super::operator::{Operator, OperatorSpec, Outcome, StartError, SwapReport};
use super::plugin::Plugin;
use super::state::KeyedState;

enum Command {
    Transform(Batch, oneshot::Sender<Outcome>),
    Decode(Vec<Message>, oneshot::Sender<Outcome>),
    Swap(
        Box<super::Prepared>,
        oneshot::Sender<Result<SwapReport, StartError>>,
    ),
    Rollback(oneshot::Sender<Result<SwapReport, StartError>>),
    State(oneshot::Sender<KeyedState>),
}

/// A handle to an operator running on its own thread. Dropping it stops the thread once the
/// batches already sent are done.
pub struct OperatorHandle {
    tx: Option<mpsc::Sender<Command>>,
    spec: OperatorSpec,
    metrics: Arc<OperatorMetrics>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for OperatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorHandle")
            .field("step", &self.spec.step)
            .finish_non_exhaustive()
    }
}

impl OperatorHandle {
    /// Moves `operator` to a new thread; at most `queue` batches wait for it.
    pub fn spawn(mut operator: Operator, queue: usize) -> anyhow::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Command>(queue.max(1));
        let spec = operator.spec().clone();
        let metrics = operator.metrics().clone();
        let thread = std::thread::Builder::new()
            .name(format!("weir-op:{}", spec.step))
            .spawn(move || {
                while let Some(cmd) = rx.blocking_recv() {
                    // A caller that stopped waiting is no reason to stop: ignore failed replies.
                    match cmd {
                        Command::Transform(batch, reply) => {
                            let _ = reply.send(operator.transform(batch));
                        }
                        Command::Decode(messages, reply) => {
                            let _ = reply.send(operator.decode(messages));
                        }
                        Command::Swap(prepared, reply) => {
                            let _ = reply.send(operator.swap(*prepared));
                        }
                        Command::Rollback(reply) => {
                            let _ = reply.send(operator.rollback());
                        }
                        Command::State(reply) => {
                            let _ = reply.send(operator.state().clone());
                        }
                    }
                }
            })
            .context("cannot start the operator thread")?;
        Ok(OperatorHandle {
            tx: Some(tx),
            spec,
            metrics,
            thread: Some(thread),
        })
    }

    pub fn spec(&self) -> &OperatorSpec {
        &self.spec
    }

    pub fn metrics(&self) -> &Arc<OperatorMetrics> {
        &self.metrics
    }

    async fn request<R>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> anyhow::Result<R> {
        let (reply, answer) = oneshot::channel();
        let stopped = || anyhow!("the operator thread of step {} has stopped", self.spec.step);
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(cmd(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    /// Runs a batch through the transformer.
    pub async fn transform(&self, batch: Batch) -> anyhow::Result<Outcome> {
        self.request(|r| Command::Transform(batch, r)).await
    }

    /// Decodes a batch of messages.
    pub async fn decode(&self, messages: Vec<Message>) -> anyhow::Result<Outcome> {
        self.request(|r| Command::Decode(messages, r)).await
    }

    /// Swaps in `plugin` with `config` (JSON): prepared on a blocking thread, switched between
    /// two batches. A version that fails to start, or cannot convert the running version's
    /// state, is refused and the running one stays.
    pub async fn swap(&self, plugin: Arc<Plugin>, config: &str) -> anyhow::Result<SwapReport> {
        let spec = self.spec.clone();
        let config = config.to_owned();
        let prepared = tokio::task::spawn_blocking(move || spec.prepare(plugin, &config))
            .await
            .context("preparing the new version")??;
        Ok(self
            .request(|r| Command::Swap(Box::new(prepared), r))
            .await??)
    }

    /// Swaps back to the version that ran before the last swap.
    pub async fn rollback(&self) -> anyhow::Result<SwapReport> {
        Ok(self.request(Command::Rollback).await??)
    }

    /// A copy of the step's keyed state.
    pub async fn state(&self) -> anyhow::Result<KeyedState> {
        self.request(Command::State).await
    }
}

impl Drop for OperatorHandle {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
