package personalize.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Picks the internal records of one route from an operator's output and pairs each with the key it
 * is addressed to, in Java: PyFlink's {@code key_by} would call Python once per record for the key
 * (docs/architecture.md, "Keyed in Java").
 *
 * <p>Input: the job's output rows {@code Row(byte[] k, byte[] v, String topic)}. Output, for the rows
 * whose topic is the route: {@code Row(String key, row)} with the key decoded from {@code k} (UTF-8),
 * the shape a keyed Python operator reads after Flink's key-by on field 0.
 */
public final class RouteByKey implements FlatMapFunction<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final String route;

    public RouteByKey(String route) {
        this.route = route;
    }

    @Override
    public void flatMap(Row row, Collector<Row> out) {
        if (route.equals(row.getField(2))) {
            out.collect(Row.of(new String((byte[]) row.getField(0), StandardCharsets.UTF_8), row));
        }
    }
}
