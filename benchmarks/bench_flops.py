"""FLOP counts and model FLOP utilisation of the benchmarks.

Two counts of a program's FLOPs: XLA's (``flops`` of a lowered or compiled
program's cost analysis) and an analytic one (the multiply-accumulates of
every convolution and matmul of the network's jaxpr); MFU is achieved
FLOP/s per device over the device's dense bf16 peak (`peak_flops`).
"""

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

# Dense (no sparsity) bf16 tensor-core peak per device, FLOP/s, from the
# vendor's data sheets. Checked in order against jax's device_kind.
_PEAK_BF16 = (
    (('H200',), 989.4e12),
    (('H100', 'PCIe'), 756e12),
    (('H100', 'HBM3'), 989.4e12),  # SXM5 reports 'NVIDIA H100 80GB HBM3'.
    (('H100', 'SXM'), 989.4e12),
    (('A100',), 312e12),
)


def peak_flops(device_kind: str, peak_tflops: Optional[float]
               ) -> tuple[Optional[float], str]:
  """(peak FLOP/s per device or None, where it comes from)."""
  if peak_tflops:
    return peak_tflops * 1e12, '--peak_tflops'
  for words, peak in _PEAK_BF16:
    if all(word in device_kind for word in words):
      return peak, f'dense bf16 peak of {device_kind}'
  return None, f'unknown peak for {device_kind!r}; pass --peak_tflops'


def xla_flops(stage) -> Optional[float]:
  """'flops' of a `Lowered`/`Compiled` cost analysis, or None if absent.

  Depending on the jax version the analysis is a dict or a list of dicts
  (one per program); the programs' counts are summed.
  """
  try:
    analysis = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    # Some backends do not implement it; the benchmark still runs.
    return None
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  values = [a.get('flops') for a in analysis if a]
  values = [v for v in values if v is not None and v >= 0]
  return float(sum(values)) if values else None


def _subjaxprs(params: dict[str, Any]):
  """The jaxprs inside an equation's parameters (pjit, custom_jvp, ...)."""
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, 'eqns'):
        yield item
      elif hasattr(getattr(item, 'jaxpr', None), 'eqns'):
        yield item.jaxpr


def matmul_macs(jaxpr, needed=None) -> int:
  """Multiply-accumulates of the convolutions and dot products of a jaxpr.

  Only equations that the jaxpr's outputs depend on are counted, as XLA
  drops the others (e.g. the classifier heads when only the features are
  returned).

  Args:
    jaxpr: a `Jaxpr`; a nested jaxpr (jit, custom derivatives) is counted
      whole when its equation is needed, as executed without control flow.
    needed: the outputs that count (default: all of them).

  Returns:
    the MAC count.
  """
  live = {v for v in (jaxpr.outvars if needed is None else needed)
          if isinstance(v, jax.extend.core.Var)}
  total = 0
  for eqn in reversed(jaxpr.eqns):
    if not (eqn.effects or any(v in live for v in eqn.outvars)):
      continue
    live.update(v for v in eqn.invars if isinstance(v, jax.extend.core.Var))
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      kernel = eqn.invars[1].aval
      spec = eqn.params['dimension_numbers'].rhs_spec
      # Each output element sums over the kernel window and the input
      # channels of its group (rhs_spec: out channels, in channels, window).
      per_output = math.prod(kernel.shape[d] for d in spec[1:])
      total += math.prod(eqn.outvars[0].aval.shape) * per_output
    elif name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs.shape[d] for d in contracting)
    for sub in _subjaxprs(eqn.params):
      total += matmul_macs(sub)
  return total


def forward_macs(model, variables, image_size: tuple[int, int],
                 outputs: tuple[str, ...]) -> int:
  """MACs of one image's forward pass (shapes only, no compute).

  Args:
    model: the network.
    variables: its variables (arrays or shape/dtype structs).
    image_size: input (height, width).
    outputs: the network outputs whose computation counts.

  Returns:
    the MAC count, in evaluation mode: the same convolutions and matmuls
    as training, without the BatchNorm collectives that need a mapped axis.
  """
  model = model.clone(bn_axis_name=None)
  image = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)

  def apply(variables, image):
    results = model.apply(variables, image, train=False)
    return [results[key] for key in outputs if key in results]

  return matmul_macs(jax.make_jaxpr(apply)(variables, image).jaxpr)


def si(value: float, unit: str) -> str:
  """12.3e9 -> '12.3 G<unit>' (the prefix that suits the value)."""
  for prefix, scale in (('P', 1e15), ('T', 1e12), ('G', 1e9), ('M', 1e6),
                        ('k', 1e3)):
    if abs(value) >= scale:
      return f'{value / scale:.4g} {prefix}{unit}'
  return f'{value:.4g} {unit}'


def print_flops_and_mfu(figures: dict[str, Any], per_image_rate: float,
                        passes: str):
  """Prints FLOPs per image, achieved FLOP/s and MFU; adds them to figures.

  Args:
    figures: must hold ``xla_flops_per_image`` (None if unknown),
      ``analytic_flops_per_image``, ``peak_flops_per_device`` and
      ``peak_source``; may hold ``xla_lowered_flops_per_image``.
    per_image_rate: images per second per device.
    passes: how the analytic count was formed, for the printout.
  """
  xla = figures['xla_flops_per_image']
  analytic = figures['analytic_flops_per_image']
  xla_text = si(xla, 'FLOP') if xla else 'n/a'
  lowered = figures.get('xla_lowered_flops_per_image')
  lowered_text = si(lowered, 'FLOP') if lowered else 'n/a'
  print(f'per image: XLA {xla_text} (cost analysis of the compiled program '
        f'/ images per device; {lowered_text} before optimisation); '
        f'analytic {si(analytic, "FLOP")} ({passes})')
  peak = figures['peak_flops_per_device']
  for key, count in (('xla', xla), ('analytic', analytic)):
    achieved = count * per_image_rate if count else None
    figures[f'achieved_flops_per_device_{key}'] = achieved
    figures[f'mfu_{key}'] = achieved / peak if achieved and peak else None
  parts = []
  for key in ('xla', 'analytic'):
    achieved, mfu = (figures[f'achieved_flops_per_device_{key}'],
                     figures[f'mfu_{key}'])
    if achieved is None:
      parts.append(f'{key} n/a')
    else:
      parts.append(f'{key} {si(achieved, "FLOP/s")}, MFU ' + (
          f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'))
  print(f'per device: {"; ".join(parts)}  [{figures["peak_source"]}'
        + (f', {si(peak, "FLOP/s")}]' if peak else ']'))
