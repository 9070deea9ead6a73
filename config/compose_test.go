package config_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/eventrouter/eventrouter/config"
)

// docker-compose.yml publishes the ops server on the host's loopback only
// unless the configuration it runs with requires a token.
func TestComposeKeepsOpsOnLoopback(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Environment map[string]string `yaml:"environment"`
			Ports       []string          `yaml:"ports"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	svc, ok := compose.Services["eventrouter"]
	if !ok {
		t.Fatal("docker-compose.yml has no eventrouter service")
	}
	cfg, err := config.Load(filepath.Join("..", config.DefaultPath), func(k string) string { return svc.Environment[k] })
	if err != nil {
		t.Fatalf("Load(shipped eventrouter.yaml) with compose's environment = %v", err)
	}
	token := cfg.Ops.TokenFile != "" || cfg.Ops.TokenEnv != "" && svc.Environment[cfg.Ops.TokenEnv] != ""
	if !cfg.Ops.Enabled || token {
		return
	}
	_, opsPort, err := net.SplitHostPort(cfg.Ops.Listen)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range svc.Ports {
		parts := strings.Split(p, ":")
		if parts[len(parts)-1] != opsPort {
			continue
		}
		if len(parts) != 3 || parts[0] != "127.0.0.1" {
			t.Errorf("docker-compose.yml publishes the ops port as %q with no token; want 127.0.0.1:HOST_PORT:%s", p, opsPort)
		}
	}
}
