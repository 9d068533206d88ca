"""InfoNCE (NT-Xent) over the global batch, negatives gathered from every replica.

Convention. Each replica holds local embeddings [2b, d]: its b view-1 clips, then the
view-2 clips of the same b videos. The global batch is the B = b * R videos of all R
replicas. Every clip is an anchor; its positive is the other view of its video and its
candidates are all 2B clips of the global batch except itself (self-similarity masked):

    loss_i = -log softmax_j(<z_i, z_j> / tau)[pos(i)],  j != i,  z = z / ||z||

`contrastive_loss` returns the mean of loss_i over the *local* 2b anchors, i.e. the
average of the view-1 and view-2 directions (Model Garden's video_ssl reports their sum,
twice this value; at initialisation ours is about log(2B - 1)).

Replicas. The candidates come from `ReplicaContext.all_gather`, which is differentiable:
its gradient all-reduces (sums) the upstream gradient of every replica and slices the
local part, so each replica's embeddings receive the gradient of the sum of all
replicas' losses. Gradient scaling that makes R replicas equal one device on the same
global batch is the caller's job (see models/pretrainer.py): divide this loss by R and
let the optimizer's all-reduce SUM the gradients.

Metrics (over the local anchors, all 2B - 1 candidates): `accuracy`, how often the
positive has the largest similarity; `entropy`, the mean entropy (nats) of the softmax
over candidates: log(2B - 1) when uniform, 0 when collapsed onto one candidate. Model
Garden reports both on the view-1 -> view-2 block only; here every candidate counts.
"""

from typing import Dict, Optional

import tensorflow as tf

# Masked logits get this value rather than -inf: exp() underflows to exactly 0, and
# 0 * log_softmax stays finite (0 * -inf would make the entropy NaN).
_MASK_VALUE = -1e9


def _gather_across_replicas(z: tf.Tensor):
  """(all embeddings [2B, d], offset of this replica's first row in them)."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    # Cross-replica context (e.g. a call under strategy.scope()) or one replica.
    return z, 0
  gathered = ctx.all_gather(z, axis=0)
  local = tf.shape(z)[0]
  offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * local
  return gathered, offset


def contrastive_logits(embeddings: tf.Tensor,
                       temperature: float = 0.1,
                       cross_replica: bool = True):
  """Masked similarity logits [2b, 2B] and the candidate index of each positive [2b].

  Exposed for tests and diagnostics; `contrastive_loss` is what training uses.
  """
  z = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1, epsilon=1e-12)
  if cross_replica:
    candidates, offset = _gather_across_replicas(z)
  else:
    candidates, offset = z, 0
  local = tf.shape(z)[0]
  half = local // 2
  logits = tf.matmul(z, candidates, transpose_b=True) / tf.cast(temperature, tf.float32)
  rows = tf.range(local)
  self_index = rows + offset
  positive_index = (rows + half) % local + offset
  # Comparison instead of one_hot(depth=tensor): stays shape-polymorphic and XLA-friendly.
  columns = tf.range(tf.shape(candidates)[0])
  is_self = tf.equal(columns[None, :], self_index[:, None])
  logits = tf.where(is_self, tf.constant(_MASK_VALUE, tf.float32), logits)
  return logits, positive_index


def contrastive_loss(embeddings: tf.Tensor,
                     temperature: float = 0.1,
                     cross_replica: bool = True) -> Dict[str, tf.Tensor]:
  """InfoNCE over the global batch; float32 whatever the dtype of `embeddings`.

  Args:
    embeddings: [2b, d] projection-head outputs (not normalized), view 1 then view 2.
    temperature: tau; CVRL uses 0.1.
    cross_replica: gather candidates from every replica (when called in a replica
      context of a multi-replica strategy); False keeps negatives local.
  Returns:
    dict of float32 scalars: 'loss' (mean over this replica's anchors, *not* divided
    by the number of replicas), 'accuracy', 'entropy'.
  """
  if embeddings.shape[0] is not None and embeddings.shape[0] % 2:
    raise ValueError(f'contrastive_loss needs view 1 then view 2 (an even number of '
                     f'clips per replica); got {embeddings.shape[0]}')
  logits, positive = contrastive_logits(embeddings, temperature, cross_replica)
  per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive,
                                                              logits=logits)
  log_probs = tf.nn.log_softmax(logits, axis=-1)
  entropy = -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1)
  predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
  correct = tf.cast(tf.equal(predicted, positive), tf.float32)
  return {
      'loss': tf.reduce_mean(per_anchor),
      'accuracy': tf.reduce_mean(correct),
      'entropy': tf.reduce_mean(entropy),
  }


def num_replicas_in_sync(strategy: Optional[tf.distribute.Strategy] = None) -> int:
  """Replicas whose gradients the optimizer sums (1 outside any strategy)."""
  if strategy is None:
    ctx = tf.distribute.get_replica_context()
    if ctx is not None:
      return ctx.num_replicas_in_sync
    strategy = tf.distribute.get_strategy()
  return strategy.num_replicas_in_sync
