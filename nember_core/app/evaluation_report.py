"""A model's walk-forward evaluation as `nember train` prints it: a compact table."""

from __future__ import annotations

from typing import Any

CLASS_COLUMNS = (("accuracy", "accuracy"), ("balanced_accuracy", "bal. acc."),
                 ("log_loss", "log loss"))
REG_COLUMNS = (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"), ("hit_rate", "hit rate"))


def lines(evaluation: dict[str, Any] | None, model_type: str) -> list[str]:
    """What to print after a model is trained (its warnings aside)."""
    if not evaluation:
        return []
    folds = evaluation.get("folds") or []
    notes = [f"  ({note})" for note in evaluation.get("notes", [])]
    if not folds:
        return ["Not evaluated:", *notes]
    out = [f"Walk-forward over {len(folds)} folds (horizon {evaluation['horizon']}, purge "
           f"{evaluation['purge']} samples); every score is on samples never trained on:"]
    columns = CLASS_COLUMNS if model_type == "class" else REG_COLUMNS
    backtest = any("backtest" in fold for fold in folds)
    header = f"{'fold':<6}{'trained':>12}{'tested':>12}" + "".join(
        f"{title:>11}" for _, title in columns)
    if backtest:
        header += f"{'return':>10}{'hold':>10}{'trades':>8}"
    out.append(header)
    for fold in folds:
        train, test = fold["train"], fold["test"]
        row = (f"{fold['fold']:<6}{f'{train[0]}-{train[1] - 1}':>12}"
               f"{f'{test[0]}-{test[1] - 1}':>12}" + _scores(fold["metrics"], columns))
        if backtest:
            row += _fold_backtest(fold.get("backtest"))
        out.append(row)
    first, last = folds[0]["test"][0], folds[-1]["test"][1] - 1
    total = f"{'all':<6}{'':>12}{f'{first}-{last}':>12}" + _scores(
        evaluation.get("metrics", {}), columns)
    pooled = evaluation.get("backtest")
    if backtest and pooled:
        total += (f"{_percent(pooled['strategy']['return']):>10}"
                  f"{_percent(pooled['buy_and_hold']['return']):>10}"
                  f"{pooled['strategy']['trades']:>8}")
    out.append(total)
    coverage = evaluation.get("coverage")
    if coverage:
        out.append("Most confident predictions only: " + ", ".join(
            f"top {level['coverage']:.0%} hit rate {level['hit_rate']:.2f}"
            for level in coverage))
    if pooled:
        strategy, hold = pooled["strategy"], pooled["buy_and_hold"]
        out.append(
            f"Backtest, following the signal vs buy-and-hold: return "
            f"{_percent(strategy['return'])} vs {_percent(hold['return'])}, Sharpe "
            f"{_number(strategy['sharpe'])} vs {_number(hold['sharpe'])}, max drawdown "
            f"{strategy['max_drawdown']:.1%} vs {hold['max_drawdown']:.1%}, "
            f"{strategy['trades']} trades (no costs)")
    return out + notes


def _scores(metrics: dict[str, Any], columns) -> str:
    return "".join(f"{_number(metrics.get(name)):>11}" for name, _ in columns)


def _fold_backtest(result: dict[str, Any] | None) -> str:
    if result is None:
        return f"{'':>10}{'':>10}{'':>8}"
    return (f"{_percent(result['return']):>10}{_percent(result['buy_and_hold_return']):>10}"
            f"{result['trades']:>8}")


def _percent(value: float) -> str:
    return f"{value:+.1%}"


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"
