package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestCompletionScripts sources what `nfsteer completion bash|zsh` prints
// in that shell, with the shell's completion machinery stubbed (bash's
// COMP_WORDS and COMP_CWORD, zsh's words, compdef and compadd), and a
// built nfsteer on PATH: each script offers the commands, a command's
// subcommands, and the flags that start with what was typed.
func TestCompletionScripts(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "nfsteer"), ".").CombinedOutput(); err != nil {
		t.Fatalf("building nfsteer: %v\n%s", err, out)
	}
	lines := []struct {
		words []string // the command line, the cursor in its last word
		want  []string // among what is offered
		only  string   // every offer starts with it
	}{
		{[]string{"nfsteer", ""}, []string{"agent", "instance", "sessions", "status"}, ""},
		{[]string{"nfsteer", "sessions", ""}, []string{"list", "show"}, ""},
		{[]string{"nfsteer", "agent", "--re"}, []string{"--redis", "--refresh"}, "--re"},
	}
	for _, shell := range []string{"bash", "zsh"} {
		t.Run(shell, func(t *testing.T) {
			sh, err := exec.LookPath(shell)
			if err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("%s not found; CI must install it", shell)
				}
				t.Skipf("skipping: %s not installed", shell)
			}
			script := filepath.Join(dir, "completion."+shell)
			r := nfsteer(t, "completion", shell)
			if r.code != 0 {
				t.Fatalf("nfsteer completion %s: %+v", shell, r)
			}
			if err := os.WriteFile(script, []byte(r.stdout), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, l := range lines {
				quoted := make([]string, len(l.words))
				for i, w := range l.words {
					quoted[i] = "'" + w + "'"
				}
				var prog string
				if shell == "bash" {
					prog = "source " + script + "; COMP_WORDS=(" + strings.Join(quoted, " ") + "); COMP_CWORD=" +
						strconv.Itoa(len(l.words)-1) + `; _nfsteer; printf '%s\n' "${COMPREPLY[@]}"`
				} else {
					prog = `compdef() { :; }; compadd() { shift; print -l -- "${(@P)1}"; }; source ` + script +
						"; words=(" + strings.Join(quoted, " ") + "); _nfsteer"
				}
				cmd := exec.Command(sh, "-c", prog)
				cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"), "NFSTEER_REDIS=")
				out, err := cmd.CombinedOutput()
				got := strings.Fields(string(out))
				missing := slices.DeleteFunc(slices.Clone(l.want), func(w string) bool { return slices.Contains(got, w) })
				stray := slices.DeleteFunc(slices.Clone(got), func(g string) bool { return strings.HasPrefix(g, l.only) })
				if err != nil || len(missing) > 0 || len(stray) > 0 {
					t.Errorf("completing %q: %v; offered %q: missing %q, not starting with %q: %q", strings.Join(l.words, " "), err, got, missing, l.only, stray)
				}
			}
		})
	}
}
