// serve.go: `serve` mode. Runs the workload phase after phase and serves net/http/pprof
// (/debug/pprof/heap, allocs, mutex, block, goroutine, profile?seconds=) on a loopback
// address until SIGTERM/SIGINT or -duration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof/ on http.DefaultServeMux
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

type serveFlags struct {
	commonFlags
	listen      string
	addrFile    string
	duration    time.Duration
	allowRemote bool
}

func parseServeFlags(args []string) (*serveFlags, error) {
	f := &serveFlags{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	f.register(fs, time.Second, 0.2)
	fs.StringVar(&f.listen, "listen", "127.0.0.1:0", "listen address (loopback unless -allow-remote)")
	fs.StringVar(&f.addrFile, "addr-file", "", "write the bound address here once listening")
	fs.DurationVar(&f.duration, "duration", 0, "exit after this long (0: run until a signal)")
	fs.BoolVar(&f.allowRemote, "allow-remote", false, "allow a non-loopback listen address")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() != 0 {
		return nil, errors.New("serve: unexpected arguments")
	}
	if !f.allowRemote && !isLoopback(f.listen) {
		return nil, fmt.Errorf("refusing non-loopback -listen %q without -allow-remote", f.listen)
	}
	return f, nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func serveMain(args []string) error {
	f, err := parseServeFlags(args)
	if err != nil {
		return err
	}
	runtime.MemProfileRate = f.memrate
	wl, err := newWorkload(&f.commonFlags, allActivities())
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	if f.addrFile != "" {
		if err := writeAtomically(f.addrFile, addr+"\n"); err != nil {
			ln.Close()
			return err
		}
	}
	fmt.Printf("listening on %s\n", addr)
	os.Stdout.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.duration)
		defer cancel()
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(ln) }()
	go runPhases(ctx, wl, &f.commonFlags)

	select {
	case <-ctx.Done():
	case err := <-srvErr:
		return err
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutCtx)
}

// runPhases runs phase after phase until ctx ends.
func runPhases(ctx context.Context, wl *workload, c *commonFlags) {
	for k := 0; ctx.Err() == nil; k++ {
		wl.phase(k, time.Now(), c.interval, c.cpuShare)
	}
}

// writeAtomically writes a temporary file next to path and renames it, so a reader polling
// for path never sees it half written.
func writeAtomically(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".addr-*")
	if err != nil {
		return err
	}
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
