"""modelops.cpu: naming the CPU beside every figure."""

from __future__ import annotations

from modelops.cpu import ISA_FLAGS, cpu_info, cpu_summary, parse_cpuinfo

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx_vnni avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse avx2
"""


def test_the_name_carries_family_and_model_and_the_flags_are_the_first_processors():
    name, flags = parse_cpuinfo(ZEN5)
    assert name == "AMD EPYC (family 26, model 2)"
    assert {"avx2", "avx512_vnni", "avx_vnni", "avx512_bf16"} <= flags


def test_a_cpuinfo_without_family_or_name_keeps_what_it_has():
    assert parse_cpuinfo("model name\t: Some CPU\nflags\t: avx2\n") == ("Some CPU", {"avx2"})
    assert parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n") == (None, set())


def test_the_summary_names_this_machines_cpu_cores_and_flags():
    info, summary = cpu_info(), cpu_summary()
    assert summary.startswith(f"{info['cpu_model']}, {info['usable_cores']} usable cores, ")
    named = set(summary.split("usable cores, ")[1].split())
    assert named & set(ISA_FLAGS) == {flag for flag in ISA_FLAGS if info[f"has_{flag}"]}
