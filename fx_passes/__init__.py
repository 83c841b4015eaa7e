"""Inductor pass that swaps unfused Gated DeltaNet decode code for the fused gdn-ops kernel.

Enable it for the whole process::

    import fx_passes
    fx_passes.install()          # idempotent; fx_passes.uninstall() undoes it

or for one compile::

    with fx_passes.enabled():    # the compile happens at the first call, so call inside
        out = compiled(*args)

    compiled = torch.compile(model, options=fx_passes.inductor_options())
    # with CUDA graphs (what mode="reduce-overhead" does): inductor_options(cudagraphs=True)

What it rewrites (see :mod:`fx_passes.patterns`): transformers' plain-PyTorch Qwen3-Next /
Qwen3.5 decode step, PyTorch q/k L2 norms in front of a decode op, PyTorch gating in front of
``recurrent_gated_delta_rule_update``, q/k key heads repeated in PyTorch in front of a decode op,
and one slot order for the decode calls that share their slot indices. Counters:
:func:`last_counts`, :func:`total_counts` (also mirrored in
``torch._dynamo.utils.counters["gdn_ops"]``); one INFO log line per rewrite on the logger
``"gdn_ops.fx_passes"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch._inductor.config as inductor_config

from fx_passes.counters import last_counts, log, reset_counts, total_counts
from fx_passes.gdn_pass import GDNFusionPass, fingerprint

__all__ = [
    "GDNFusionPass",
    "install",
    "uninstall",
    "is_installed",
    "enabled",
    "inductor_options",
    "last_counts",
    "total_counts",
    "reset_counts",
    "fingerprint",
    "LOGGER_NAME",
]

LOGGER_NAME = log.name


def _contains_ours(p: Any) -> bool:
    if isinstance(p, GDNFusionPass):
        return True
    if isinstance(p, (list, tuple)):
        return any(_contains_ours(x) for x in p)
    return False


def is_installed() -> bool:
    """Whether the current ``post_grad_custom_post_pass`` runs this pass."""
    return _contains_ours(inductor_config.post_grad_custom_post_pass)


def install() -> GDNFusionPass:
    """Run the pass in every Inductor compile of this process. Calling it again changes nothing.

    A pass already in ``torch._inductor.config.post_grad_custom_post_pass`` is kept: it runs
    first, then this one, and the cache key (``uuid()``) covers both.
    """
    current = inductor_config.post_grad_custom_post_pass
    if isinstance(current, GDNFusionPass):
        return current
    if _contains_ours(current):
        raise RuntimeError(
            "fx_passes.install(): post_grad_custom_post_pass already holds a GDNFusionPass inside a list; "
            "leave it as it is or remove it first"
        )
    p = GDNFusionPass(previous=current)
    inductor_config.post_grad_custom_post_pass = p
    log.debug("installed %r", p)
    return p


def uninstall() -> bool:
    """Undo :func:`install`: put back the pass that was there before. False if it was not installed."""
    current = inductor_config.post_grad_custom_post_pass
    if not isinstance(current, GDNFusionPass):
        return False
    inductor_config.post_grad_custom_post_pass = current.previous
    log.debug("uninstalled %r", current)
    return True


def inductor_options(cudagraphs: bool = False) -> dict[str, Any]:
    """Options for ``torch.compile(..., options=fx_passes.inductor_options())``.

    Scopes the pass to that one compiled function; any pass configured when this is called is
    chained as in :func:`install`. ``torch.compile`` takes ``mode`` or ``options``, not both:
    ``cudagraphs=True`` adds what ``mode="reduce-overhead"`` sets (Inductor's CUDA graphs).
    """
    current = inductor_config.post_grad_custom_post_pass
    options: dict[str, Any] = {"triton.cudagraphs": True} if cudagraphs else {}
    if _contains_ours(current):
        return {**options, "post_grad_custom_post_pass": current}
    return {**options, "post_grad_custom_post_pass": GDNFusionPass(previous=current)}


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Run the pass in compiles that happen inside the block (torch.compile compiles on the first call)."""
    with inductor_config.patch(inductor_options()):
        yield
