import json,glob,sys,os
R=sys.argv[1]
print("| settings | regular | 5-or-7 | 1-2 clauses | utf8 | copied |")
print("|---|---:|---:|---:|---:|---:|")
for p in sorted(glob.glob(f'/work/exp/sw-{R}-*.json')):
    try: v=json.load(open(p))['form']['samples']
    except Exception as e: continue
    tag=os.path.basename(p)[len(f'sw-{R}-'):-5]
    print(f"| {tag} | {v['regular']:.3f} | {v['five_or_seven']:.3f} | {v['short_clauses']:.3f} | {v['valid_utf8']:.3f} | {v['copied_8grams']:.3f} |")
