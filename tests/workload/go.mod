module pdelta/workload

go 1.19
