"""Conditional density estimation: neural posterior estimation for a Gaussian simulator.

Simulator: parameters ``θ ~ N(0, I₂)``; data ``x = (x_1, ..., x_n)``, ``x_j ~ N(θ, σ² I₂)``, with
``n = 5`` and ``σ = 1``. A conditional flow ``q(θ | x)`` (context = the 10 raw numbers of ``x``)
is trained on simulated pairs by maximum likelihood, then compared with the analytic posterior
``θ | x ~ N(n x̄ / (n + σ²), σ² / (n + σ²) · I)``. With ``--objective flow_matching`` the flow
is a continuous one (FFJORD) trained by flow matching instead: flow matching posterior
estimation, many more steps at one network pass each.

Run: ``python examples/conditional.py [OUT_DIR] [--quick] [--objective flow_matching]``; writes
``conditional.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import nfkit as nf

N_OBS, SIGMA = 5, 1.0


def simulate(theta: torch.Tensor) -> torch.Tensor:
    """``θ (*, 2)`` → ``x (*, N_OBS · 2)``: ``N_OBS`` noisy copies of ``θ``, flattened."""
    noise = SIGMA * torch.randn(*theta.shape[:-1], N_OBS, 2)
    return (theta.unsqueeze(-2) + noise).flatten(-2)


def posterior(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The analytic posterior's mean ``(*, 2)`` and standard deviation (isotropic)."""
    xbar = x.unflatten(-1, (N_OBS, 2)).mean(-2)
    mean = N_OBS * xbar / (N_OBS + SIGMA**2)
    return mean, (SIGMA**2 / (N_OBS + SIGMA**2)) ** 0.5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", help="directory for the figure")
    parser.add_argument("--quick", action="store_true", help="small run (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--objective", choices=("likelihood", "flow_matching"), default="likelihood"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    # Training set: pairs (θ, x) from the prior and the simulator.
    sims = 2_000 if args.quick else 50_000
    theta = torch.randn(sims, 2)
    x = simulate(theta)

    matching = args.objective == "flow_matching"
    if matching:  # a continuous flow: its field f(θ_t, t, x) is regressed, no ODE solve
        flow = nf.models.FFJORD(2, context=2 * N_OBS, hidden=(128, 128), time_features=3)
    else:
        flow = nf.models.MAF(2, context=2 * N_OBS, transforms=4, hidden=(64, 64))
    steps = 120 if args.quick else 20_000 if matching else 4000
    opt = torch.optim.Adam(flow.parameters(), lr=2e-3 if matching else 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        i = torch.randint(sims, (256,))
        if matching:
            loss = nf.flow_matching_loss(flow, theta[i], x[i]).mean()
        else:
            loss = -flow.log_prob(theta[i], context=x[i]).mean()  # log q(θ | x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0 or step == steps - 1:
            print(f"step {step:5d}  {'loss' if matching else 'nll'} {loss.item():.3f}")

    # Three new observed data sets, from known parameters.
    theta_true = torch.tensor([[0.0, 0.0], [1.5, -1.0], [-1.0, 2.0]])
    x_obs = simulate(theta_true)  # (3, 10)
    flow.eval()
    with torch.no_grad():
        post = flow.sample(2000, context=x_obs)  # (2000, 3, 2): one posterior per data set
    mean, std = posterior(x_obs)
    for k in range(len(x_obs)):
        m, s = post[:, k].mean(0), post[:, k].std(0)
        print(
            f"data set {k}: flow mean {m.numpy().round(3)}, analytic {mean[k].numpy().round(3)};"
            f" flow std {s.numpy().round(3)}, analytic {std:.3f}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(x_obs), figsize=(3.2 * len(x_obs), 3.2), dpi=80)
    angle = torch.linspace(0, 2 * torch.pi, 200)
    circle = torch.stack([angle.cos(), angle.sin()], -1)
    for k, ax in enumerate(axes):
        ax.scatter(*post[:, k].T, s=1, alpha=0.3, color="C0", label="flow q(θ | x) samples")
        for r in (1, 2):
            ring = mean[k] + r * std * circle
            ax.plot(
                *ring.T, color="k", lw=1, label="analytic posterior (1σ, 2σ)" if r == 1 else None
            )
        ax.scatter(
            *x_obs[k].unflatten(-1, (N_OBS, 2)).T, marker="x", color="C3", label="observations"
        )
        ax.scatter(*theta_true[k], marker="*", s=120, color="gold", edgecolor="k", label="true θ")
        ax.set_xlim(mean[k, 0] - 2.5, mean[k, 0] + 2.5)
        ax.set_ylim(mean[k, 1] - 2.5, mean[k, 1] + 2.5)
        ax.set_aspect("equal")
        ax.set_title(f"data set {k + 1}", fontsize=9)
    axes[0].legend(fontsize=6, loc="lower left", frameon=False)
    fig.tight_layout()
    fig.savefig(out / "conditional.png")
    print(f"wrote {out / 'conditional.png'}")


if __name__ == "__main__":
    main()
