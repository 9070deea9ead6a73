package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/eventrouter/eventrouter/config"
)

// listen serves each connection with serve until the test ends, and
// returns the address.
func listen(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().String()
}

// saslCluster is an in-process Kafka-protocol broker that requires SCRAM.
func saslCluster(t *testing.T, user, password string) string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser(config.SASLSCRAMSHA512, user, password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// selfSigned is a certificate for 127.0.0.1 that no one signed.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func scramAccess(t *testing.T, brokers []string, password string) Settings {
	t.Helper()
	cfg := config.Defaults().Kafka
	cfg.SASL = config.SASL{Mechanism: config.SASLSCRAMSHA512, Username: "router", PasswordEnv: "P"}
	a, err := New(cfg, brokers, func(string) string { return password })
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRefusal(t *testing.T) {
	sasl := saslCluster(t, "router", "right-password")
	// A listener that takes connections and never answers, as a broker
	// that hangs does.
	silent := listen(t, func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	})
	// A server of another protocol.
	http := listen(t, func(c net.Conn) {
		defer c.Close()
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"))
	})
	// A listener that speaks TLS, as an SSL listener does.
	tlsAddr := listen(t, func(c net.Conn) {
		defer c.Close()
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
		_ = tc.Handshake()
		buf := make([]byte, 512)
		_, _ = tc.Read(buf)
	})
	dead := "127.0.0.1:1"
	tests := []struct {
		name     string
		brokers  []string
		password string
		want     string // the refusal; "" for none
	}{
		{"right password", []string{sasl}, "right-password", ""},
		// kfake closes the connection where Apache Kafka answers that
		// the authentication failed (TestSecuredClusterRefusals): a
		// closed connection alone is not a refusal.
		{"wrong password, connection closed", []string{sasl}, "wrong-password", ""},
		{"a plaintext client on a TLS listener", []string{tlsAddr}, "p", "kafka " + tlsAddr + ": the listener expects TLS"},
		{"an unreachable broker first", []string{dead, tlsAddr}, "p", "kafka " + tlsAddr + ": the listener expects TLS"},
		{"one broker that takes the client is enough", []string{tlsAddr, silent, sasl}, "right-password", ""},
		{"unreachable is not a refusal", []string{dead}, "p", ""},
		{"silence is not a refusal", []string{silent}, "p", ""},
		{"another protocol is not a refusal", []string{http}, "p", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The deadline stands in for the budget, so that a silent
			// broker ends the check in a second.
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			err := scramAccess(t, tt.brokers, tt.password).Refusal(ctx)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("refusal(%v) = %v; want nil", tt.brokers, err)
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Errorf("refusal(%v) = %v; want %q", tt.brokers, err, tt.want)
			}
		})
	}
}
