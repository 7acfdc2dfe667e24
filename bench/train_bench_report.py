"""The fine-tuning benchmark's printed report: one line of settings, a table of every
run, then the ratios against their goals (bench/train_bench.py measures them)."""

from __future__ import annotations

from typing import Any


def print_report(r: dict[str, Any], sizes: list[int]) -> None:
    m, g = r["machine"], r["goals"]
    tiles = r["sizes"][str(sizes[0])]["cold"]["tiles_per_image"]
    print(
        f"shape {r['shape']}, device {r['device']} ({m['cpu']}, {m['cores']} cores), "
        f"torch {m['torch']}, encoder {r['encoder']}, batch {r['batch_size']}, "
        f"{r['steps_per_run']} steps per run (the first left out), {r['repeats']} run(s) "
        f"each (a step counts with its fastest), loader workers "
        f"{r['loader_workers']}, images <= {r['image_longest_edge']} px -> processor "
        f"{r['processor_longest_edge']} px, {tiles or 0:.1f} tiles each"
    )
    print(
        f"{'images':>6} {'cache':>5} {'s/step':>7} {'samples/s':>9} {'tower steps':>11} "
        f"{'CPU s/step':>10} {'encoded':>7} {'tower':>6} {'wait':>5} {'rest':>5} {'emo':>3} "
        f"{'peak RSS':>9} {'worker':>7}"
    )
    for n in sizes:
        for phase in ("cold", "warm"):
            p = r["sizes"][str(n)][phase]
            print(
                f"{n:>6} {phase:>5} {p['seconds_per_step']:>7.2f} {p['samples_per_s']:>9.2f} "
                f"{p['tower_steps']:>5}/{p['timed_steps']:<5} {p['cpu_seconds_per_step']:>10.2f} "
                f"{p['encoded_images']:>7} {100 * p['share_vision_tower']:>5.0f}% "
                f"{100 * p['share_loader_wait']:>4.0f}% "
                f"{100 * p['share_model_and_optimizer']:>4.0f}% "
                f"{p['most_emotion_samples_in_a_step']:>3} {p['peak_rss_mb']:>6.0f} MB "
                f"{p['loader_worker_peak_rss_mb']:>4.0f} MB"
            )
    contended = sum(
        r["sizes"][str(n)][p]["contended_steps"] for n in sizes for p in ("cold", "warm")
    )
    if contended:
        print(
            f"note: {contended} steps ran with fewer cores than usual (other work on the machine)"
        )
    met = {True: "met", False: "NOT met"}
    print(
        f"peak RSS {sizes[-1]} / {sizes[0]} images: {r['peak_rss_ratio']:.2f}x "
        f"(goal <= {g['peak_rss_ratio_at_most']}: {met[g['peak_rss_ratio_met']]})"
    )
    for n in sizes:
        s = r["sizes"][str(n)]
        if s["cached_step_speedup"] is None:
            print(f"cached-step speed-up at {n} images: not measured (no step ran the tower)")
            continue
        print(
            f"cached-step speed-up at {n} images: {s['cached_step_speedup']:.2f}x over "
            f"{s['paired_steps']} steps ({s['tower_seconds_per_step']:.2f} s/step with the "
            f"vision tower, {s['cached_seconds_per_step']:.2f} s/step cached; goal >= "
            f"{g['cached_step_speedup_at_least']}: "
            f"{met[s['cached_step_speedup'] >= g['cached_step_speedup_at_least']]}); "
            f"in CPU seconds {s['cached_step_speedup_cpu']:.2f}x"
        )
    for n in sizes:
        s = r["sizes"][str(n)]
        print(
            f"samples/s at {n} images: {s['cold']['samples_per_s']:.2f} cold, "
            f"{s['warm']['samples_per_s']:.2f} cached"
        )
    c = r["step_costs"]
    if c is not None:
        tower = c["vision_tower_cpu_seconds_per_image"]
        print(
            f"where a step goes (CPU s, fitted over {c['fitted_steps']} cached steps): "
            f"{c['text_only_step_cpu_seconds']:.2f} for {r['batch_size']} text samples, "
            f"+{c['per_emotion_sample_cpu_seconds']:.2f} per emotion sample among them; "
            f"the vision tower {tower or 0:.3f} per image"
        )
