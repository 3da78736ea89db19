#!/usr/bin/env python3
import json, sys, os, re, glob
E='/work/exp'
names = sys.argv[1:] or sorted(os.path.basename(p)[:-4] for p in glob.glob(E+'/*.log') if not p.endswith('queue.log'))
print("| run | steps | tok/s | val bpb | bits/char | prose bpb | regular | 5-or-7 | 1-2 clauses | utf8 | copied | regular (0.8/k50) | 5-or-7 (0.8/k50) | 1-2 (0.8/k50) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in names:
    log=open(f'{E}/{n}.log').read()
    m=re.search(r'done after (\d+) steps in ([\d.]+) s \(([\d.]+) tok/s\): val loss ([\d.]+), ([\d.]+) bits/byte, ([\d.]+) bits/char', log)
    steps,_,toks,_,bpb,bpc = m.groups() if m else ('?',)*6
    form=None
    try:
        for l in open(f'{E}/{n}/metrics.jsonl'):
            v=json.loads(l)
            if 'form' in v: form=v['form']['samples']
    except Exception: pass
    def get(path):
        try: return json.load(open(path))
        except Exception: return None
    pr=get(f'{E}/{n}.prose.json'); ref=get(f'{E}/{n}.ref.json')
    prose = pr.get('bits_per_byte') if pr else None
    rf = ref['form']['samples'] if ref else None
    f=lambda x,k: f"{x[k]:.3f}" if x and x.get(k) is not None else '?'
    print(f"| {n} | {steps} | {toks} | {bpb} | {bpc} | {prose if prose is None else round(prose,3)} | {f(form,'regular')} | {f(form,'five_or_seven')} | {f(form,'short_clauses')} | {f(form,'valid_utf8')} | {f(form,'copied_8grams')} | {f(rf,'regular')} | {f(rf,'five_or_seven')} | {f(rf,'short_clauses')} |")
