// One FTP or FTPS transfer with Apache Commons Net, for the interop tests
// (tests/test_interop_clients.py compiles and runs it with tests/support/interop_clients.py).
//
// Usage: FtpsTransfer HOST PORT plain|explicit|implicit USER PASSWORD put|get LOCAL REMOTE [TLSv1.2|TLSv1.3]
//
// Commons Net never reads from an upload's data connection: storeFile
// writes the file and closes the socket (with TLS 1.3 the JDK sends the alerts
// user_canceled then close_notify, and does not wait for the server's close_notify).
// Trusts any certificate (the test CA is
// self-signed and the connection is loopback only). Exit 0 on success; otherwise
// non-zero with the failing step and the server's last reply on stderr.

import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;

import org.apache.commons.net.ftp.FTP;
import org.apache.commons.net.ftp.FTPClient;
import org.apache.commons.net.ftp.FTPReply;
import org.apache.commons.net.ftp.FTPSClient;
import org.apache.commons.net.util.TrustManagerUtils;

public final class FtpsTransfer {
    private static final int TIMEOUT_MS = 60_000;

    private FtpsTransfer() {}

    public static void main(String[] args) {
        if (args.length < 8 || args.length > 9) {
            System.err.println("usage: FtpsTransfer HOST PORT plain|explicit|implicit USER PASSWORD"
                    + " put|get LOCAL REMOTE [TLS-PROTOCOL]");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String mode = args[2];
        String user = args[3];
        String password = args[4];
        String direction = args[5];
        String local = args[6];
        String remote = args[7];
        String protocol = args.length == 9 ? args[8] : null;

        FTPClient ftp;
        switch (mode) {
            case "plain":
                ftp = new FTPClient();
                break;
            case "explicit":
            case "implicit":
                FTPSClient ftps = new FTPSClient("TLS", mode.equals("implicit"));
                ftps.setTrustManager(TrustManagerUtils.getAcceptAllTrustManager());
                if (protocol != null) {
                    ftps.setEnabledProtocols(new String[] {protocol});
                }
                ftp = ftps;
                break;
            default:
                System.err.println("unknown mode " + mode);
                System.exit(2);
                return;
        }
        if (!direction.equals("put") && !direction.equals("get")) {
            System.err.println("unknown direction " + direction);
            System.exit(2);
        }
        ftp.setConnectTimeout(TIMEOUT_MS);
        ftp.setDefaultTimeout(TIMEOUT_MS);
        ftp.setDataTimeout(java.time.Duration.ofMillis(TIMEOUT_MS));
        int status = 1;
        try {
            ftp.connect(host, port);
            check(ftp, FTPReply.isPositiveCompletion(ftp.getReplyCode()), "connect");
            check(ftp, ftp.login(user, password), "login");
            if (ftp instanceof FTPSClient) {
                FTPSClient ftps = (FTPSClient) ftp;
                ftps.execPBSZ(0);
                check(ftp, FTPReply.isPositiveCompletion(ftp.getReplyCode()), "PBSZ 0");
                ftps.execPROT("P");
                check(ftp, FTPReply.isPositiveCompletion(ftp.getReplyCode()), "PROT P");
            }
            check(ftp, ftp.setFileType(FTP.BINARY_FILE_TYPE), "TYPE I");
            ftp.enterLocalPassiveMode();
            if (direction.equals("put")) {
                try (InputStream in = new FileInputStream(local)) {
                    check(ftp, ftp.storeFile(remote, in), "STOR " + remote);
                }
            } else {
                try (OutputStream out = new FileOutputStream(local)) {
                    check(ftp, ftp.retrieveFile(remote, out), "RETR " + remote);
                }
            }
            ftp.logout();
            status = 0;
        } catch (TransferFailed failed) {
            System.err.println(failed.getMessage());
        } catch (IOException error) {
            System.err.println("I/O error: " + error + "; last reply: " + lastReply(ftp));
        } finally {
            if (ftp.isConnected()) {
                try {
                    ftp.disconnect();
                } catch (IOException ignored) {
                    // the outcome is already decided
                }
            }
        }
        System.exit(status);
    }

    private static void check(FTPClient ftp, boolean ok, String step) throws TransferFailed {
        if (!ok) {
            throw new TransferFailed(step + " failed: " + lastReply(ftp));
        }
    }

    private static String lastReply(FTPClient ftp) {
        String reply = ftp.getReplyString();
        return reply == null ? "(no reply)" : reply.trim();
    }

    private static final class TransferFailed extends Exception {
        private static final long serialVersionUID = 1L;

        TransferFailed(String message) {
            super(message);
        }
    }
}
