import torch, time, sys
torch.set_num_threads(2)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
shapes = [("nt",2048,2304,768),("nt",2048,768,768),("nt",2048,3072,768),("nt",2048,768,3072),
("nn",2048,768,2304),("nn",2048,768,768),("nn",2048,768,3072),("nn",2048,3072,768),
("tn",2304,768,2048),("tn",768,768,2048),("tn",3072,768,2048),("tn",768,3072,2048),("nn",1024,1024,1024)]
for l,m,n,k in shapes:
    if l=="nt": a=torch.full((m,k),0.5); b=torch.full((n,k),0.25).t(); c=torch.zeros(m,n)
    elif l=="nn": a=torch.full((m,k),0.5); b=torch.full((k,n),0.25); c=torch.zeros(m,n)
    else: a=torch.full((k,m),0.5).t(); b=torch.full((k,n),0.25); c=torch.zeros(m,n)
    best=1e9
    for _ in range(reps+1):
        t=time.perf_counter()
        if l=="nn": torch.mm(a,b,out=c)
        else: c.addmm_(a,b)
        best=min(best,time.perf_counter()-t)
    print(l,m,n,k,"%.1f"%(2*m*n*k/best/1e9))
