package steering

import (
	"os"
	"strings"
	"testing"
)

// TestDocumentedMapsParse: the map the README shows and the example map
// the packages install are valid maps.
func TestDocumentedMapsParse(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## The service map")
	_, block, ok2 := strings.Cut(section, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no YAML block under \"## The service map\"")
	}
	if _, err := Parse([]byte(block)); err != nil {
		t.Errorf("the README's map: %v", err)
	}
	if _, err := LoadFile("../packaging/map.example.yaml"); err != nil {
		t.Errorf("the example map: %v", err)
	}
}
